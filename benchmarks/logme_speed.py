"""Wall time of LogME on a full-size pooled cache: 50,000 rows (CIFAR-10 train + val) of 1,280 features.

    python benchmarks/logme_speed.py [--features data/features/pooled.h5] [--splits train val]
    python benchmarks/logme_speed.py --synthetic        # no cache at hand

Reads the rows of ``--splits`` from the feature file (after ``dvc repro``), or with ``--synthetic`` (or
when the file does not exist) makes 50,000 x 1,280 float32 features in memory: 10 classes, each row a
random class-dependent mixture passed through a softplus (non-negative, like pooled activations). Prints
the CPU, the time of the spectrum (F^T F summed over blocks of rows, and its eigendecomposition), of the
fixed point, their total (what ``pipeline.analyses.transferability.logme`` takes), and the LogME score.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's pipeline, also when another one is installed

from pipeline.analyses.transferability import maximise, spectrum  # noqa: E402
from pipeline.store.features import FeatureStore  # noqa: E402


def synthetic(n: int = 50_000, dim: int = 1280, n_classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 1, (n_classes, 64)) * 0.3
    basis = rng.normal(0, 1, (64, dim)) / 8
    labels = rng.integers(0, n_classes, n)
    features = np.empty((n, dim), np.float32)
    for start in range(0, n, 5000):
        y = labels[start:start + 5000]
        z = (means[y] + rng.normal(0, 1, (len(y), 64))) @ basis + 0.3 * rng.normal(0, 1, (len(y), dim))
        features[start:start + 5000] = np.logaddexp(0, z)  # softplus
    return features, labels


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path, default=ROOT / "data/features/pooled.h5")
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    parser.add_argument("--synthetic", action="store_true", help="synthetic features, whatever the file")
    args = parser.parse_args()
    if args.synthetic or not args.features.exists():
        features, labels = synthetic()
        source = "synthetic features (softplus of a class-dependent mixture)"
    else:
        with FeatureStore(args.features) as store:
            parts = [store.load(split) for split in args.splits]
            source = f"{args.features} ({store.spec.backbone}), splits {' + '.join(args.splits)}"
        features, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; load average before: {os.getloadavg()}")
    print(f"{source}: {features.shape[0]:,} x {features.shape[1]:,} {features.dtype}, {len(np.unique(labels))} classes")

    start = time.perf_counter()
    spec, classes = spectrum(features, labels)
    spectrum_seconds = time.perf_counter() - start
    start = time.perf_counter()
    result = maximise(spec, classes)
    fixed_point_seconds = time.perf_counter() - start
    print(f"spectrum (Gram matrix + eigendecomposition): {spectrum_seconds:.1f} s; fixed point: "
          f"{fixed_point_seconds:.2f} s ({result.iterations} iterations, converged: {result.converged})")
    print(f"LogME {result.score:.4f} in {spectrum_seconds + fixed_point_seconds:.1f} s (per class: "
          f"{np.round(result.evidence, 3).tolist()}); load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
