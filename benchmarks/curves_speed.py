"""Wall time of the learning curve (the curves stage's computation) on a pooled feature cache.

    python benchmarks/curves_speed.py [--features data/features/pooled.h5]
    python benchmarks/curves_speed.py --synthetic /tmp/synthetic-cache     # no cache at hand

Runs the learning curve of ``params.yaml``'s ``curves:`` section (by default 12 values of k x 5 draws
x 4 heads) on the train and test splits of the file, exactly as the curves stage does, and prints the
time of each head, the total, and the curve. With ``--synthetic DIR`` it first writes (once, with the
project's own feature-store writer) a synthetic cache of the full CIFAR-10 size, DIR/pooled.h5:
45,000 train, 5,000 val and 10,000 test rows of 1,280 float32 features, 10 classes, each row a random
class-dependent mixture passed through a softplus (non-negative, like pooled activations; a linear
probe reaches about 75-80% on it), so that the solvers meet a problem of the real size and difficulty.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's pipeline, also when another one is installed

from pipeline.analyses.curves import learning_curve  # noqa: E402
from pipeline.core.config import load_params  # noqa: E402
from pipeline.core.device import describe_cpu  # noqa: E402
from pipeline.store.features import FeatureSpec, FeatureStore, PartialFeatures  # noqa: E402

SIZES = {"train": 4500, "val": 500, "test": 1000}
"""Synthetic rows per class (CIFAR-10: 45,000 / 5,000 / 10,000)."""


def write_synthetic(path: Path, dim: int = 1280, n_classes: int = 10, seed: int = 0) -> Path:
    """A synthetic pooled cache of the full CIFAR-10 size, written with PartialFeatures (the writer
    the extract stage uses) and read back by FeatureStore like any cache."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 1, (n_classes, 64)) * 0.3
    basis = rng.normal(0, 1, (64, dim)) / 8
    noise = rng.normal(0, 1, (256, dim)) / 16 * np.exp(-np.arange(256) / 64)[:, None]
    spec = FeatureSpec(backbone="synthetic", weights="none", weights_id="synthetic", input_size=224,
                       preprocessing="{}", dataset_fingerprint=f"synthetic-{seed}", split_seed=seed, init_seed=seed,
                       val_fraction=0.1, subset_per_class=-1, storage_dtype="float32", precision="float32",
                       classes=tuple(f"class{c}" for c in range(n_classes)), feature_dim=dim)
    part_rows = 4096
    partial = PartialFeatures(path, spec, part_rows)
    splits = {}
    for split, per_class in SIZES.items():
        labels = np.repeat(np.arange(n_classes), per_class)
        for i, start in enumerate(range(0, len(labels), part_rows)):
            y = labels[start : start + part_rows]
            Z = (means[y] + rng.normal(0, 1, (len(y), 64))) @ basis + rng.normal(0, 1, (len(y), 256)) @ noise
            X = np.logaddexp(0, Z + 0.3 * rng.normal(0, 1, (len(y), dim))).astype(np.float32)  # softplus
            partial.write_part(split, i, X, np.ones(len(y), bool))
        splits[split] = ([f"{split}/{i}" for i in range(len(labels))], labels.tolist())
    return partial.assemble(spec, splits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path, default=ROOT / "data/features/pooled.h5")
    parser.add_argument("--synthetic", type=Path, default=None, help="write (once) and use DIR/pooled.h5")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    args = parser.parse_args()
    params = load_params(args.params)
    features = args.features
    if args.synthetic:
        features = args.synthetic / "pooled.h5"
        if not features.exists():
            start = time.perf_counter()
            write_synthetic(features)
            print(f"wrote the synthetic cache {features} in {time.perf_counter() - start:.1f} s")
    print(f"CPU: {describe_cpu()}, {os.cpu_count()} cores; load average before: {os.getloadavg()}")
    start = time.perf_counter()
    with FeatureStore(features) as store:
        train, test = store.load("train"), store.load("test")
        n_classes, block_rows = len(store.spec.classes), store.block_rows()
    loaded = time.perf_counter() - start
    c = params.curves
    print(f"{features}: train {train[0].shape}, test {test[0].shape}, read in {loaded:.1f} s; "
          f"{len(c.shots)} values of k x {c.draws} draws x {len(c.heads)} heads {list(c.heads)}")
    start = time.perf_counter()
    learning_curve(train, test, n_classes, c, params.seed, block_rows=block_rows,
                   log=lambda line: print(f"[{time.perf_counter() - start:6.1f} s] {line}", flush=True))
    total = time.perf_counter() - start
    print(f"learning curve: {total:.1f} s (+ {loaded:.1f} s reading the cache); load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
