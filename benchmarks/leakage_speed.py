"""Wall time and peak memory of the leakage stage's nearest-neighbour search on a pooled feature cache.

    python benchmarks/leakage_speed.py [--features data/features/pooled.h5] [--block-rows 4096]
    python benchmarks/leakage_speed.py --synthetic /tmp/synthetic-cache     # no cache at hand

Runs the search of the leakage stage (:func:`pipeline.leakage.search`: test against train, test against
val, val against train, test against itself, exact cosine similarity in blocks read from the file) and
prints the time of each split pair, the total, and the peak resident memory of the process before and
after the search: the search must stay within ``--budget-mib`` above what the process held before it,
whatever the number of images (its working set is a few blocks: 4 * block_rows * (2 * D + block_rows)
bytes, plus HDF5's read buffers). With ``--synthetic DIR`` it uses DIR/pooled.h5, written once (in a
separate process, so that writing it does not count in the peak) by curves_speed.py's writer: the full
CIFAR-10 size, 45,000 train, 5,000 val and 10,000 test rows of 1,280 float32 features.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's pipeline, also when another one is installed
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
from curves_speed import cpu_name  # noqa: E402

from pipeline.features import FeatureStore  # noqa: E402
from pipeline.leakage import SPLIT_PAIRS, nearest_neighbours, split_pair_name, store_blocks  # noqa: E402


def peak_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path, default=ROOT / "data/features/pooled.h5")
    parser.add_argument("--synthetic", type=Path, default=None, help="write (once) and use DIR/pooled.h5")
    parser.add_argument("--block-rows", type=int, default=4096)
    parser.add_argument("--budget-mib", type=float, default=512.0,
                        help="the most the search may add to the process's peak resident memory")
    parser.add_argument("--write-synthetic", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_synthetic:
        from curves_speed import write_synthetic

        write_synthetic(args.write_synthetic)
        return
    features = args.features
    if args.synthetic:
        features = args.synthetic / "pooled.h5"
        if not features.exists():
            print(f"writing a synthetic cache of the full CIFAR-10 size to {features} (once)")
            subprocess.run([sys.executable, __file__, "--write-synthetic", str(features)], check=True)

    import torch

    with FeatureStore(features) as store:
        sizes = {s: store.n_rows(s) for s in store.splits}
        dim = store.spec.feature_dim
        print(f"CPU: {cpu_name()}, {torch.get_num_threads()} torch threads; torch {torch.__version__}")
        print(f"features: {features} ({store.spec.backbone}), {sizes} rows of {dim} {store.spec.storage_dtype}")
        warm = np.eye(8, dim, dtype=np.float32)
        nearest_neighbours(warm, warm)  # torch's thread pool and allocator: before the baseline
        before = peak_mib()
        start = time.perf_counter()
        for query, base in SPLIT_PAIRS:
            if not (sizes.get(query) and sizes.get(base, 0) > (query == base)):
                continue
            t = time.perf_counter()
            found = nearest_neighbours(store_blocks(store, query, args.block_rows),
                                       store_blocks(store, base, args.block_rows), exclude_self=query == base)
            print(f"  {split_pair_name(query, base):10s} {sizes[query]:>6,} x {sizes[base]:>6,}: "
                  f"{time.perf_counter() - t:6.1f} s, mean nearest cosine {found.similarity.mean():.4f}")
        total = time.perf_counter() - start
    after = peak_mib()
    products = sum(sizes[q] * sizes[b] for q, b in SPLIT_PAIRS if sizes.get(q) and sizes.get(b))
    working = 4 * args.block_rows * (2 * dim + args.block_rows) / 2**20
    print(f"search: {total:.1f} s for {products / 1e6:,.0f} M similarities of {dim} values "
          f"({2 * products * dim / total / 1e9:.0f} GFLOP/s), block_rows {args.block_rows}")
    print(f"peak resident memory: {before:,.0f} MiB before the search (Python, torch, the open file), "
          f"{after:,.0f} MiB after: +{after - before:,.0f} MiB (blocks and their product: {working:,.0f} MiB); "
          f"budget +{args.budget_mib:,.0f} MiB: {'within' if after - before <= args.budget_mib else 'EXCEEDED'}")


if __name__ == "__main__":
    main()
