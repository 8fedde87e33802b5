"""The linear-probe protocol's L2 sweep: speed, and accuracy against scikit-learn, in one run.

    python benchmarks/sweep_speed.py [--features data/features/pooled.h5]

For the logistic and linear heads with ``select: sweep`` (45 penalties from 1e-6 to 1e5, chosen by
validation top-1, refit on train + val), prints the wall time of sweep + refit and the test top-1;
then fits scikit-learn's LogisticRegression at each chosen penalty on train + val and prints its test
top-1, so the difference can be read off. Run it after ``dvc repro`` (it reads the feature file).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from pipeline.core.head_registry import head_class
from pipeline.heads.base import FeatureNormalizer
from pipeline.store.features import FeatureStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", default="data/features/pooled.h5")
    args = parser.parse_args()
    with FeatureStore(args.features) as store:
        (X, y), (Xv, yv), (Xt, yt) = (store.load(s) for s in ("train", "val", "test"))
    n_all = len(y) + len(yv)
    print(f"features {args.features}: train {X.shape}, val {Xv.shape}, test {Xt.shape}")

    from sklearn.linear_model import LogisticRegression

    X_all, y_all = np.concatenate([X, Xv]), np.concatenate([y, yv])
    scaled = FeatureNormalizer("standardize").fit(X_all)
    for kind in ("logistic", "linear"):
        head = head_class(kind)(head_class(kind).Params(select="sweep"))
        start = time.perf_counter()
        head.fit(X, y, validation=(Xv, yv))
        seconds = time.perf_counter() - start
        ours = float((head.predict(Xt) == yt).mean())
        l2 = head.fitted.chosen_l2
        C = 1.0 / (l2 * n_all)
        start = time.perf_counter()
        reference = LogisticRegression(C=C, max_iter=1000).fit(scaled.transform(X_all), y_all)
        ref_seconds = time.perf_counter() - start
        theirs = float((reference.predict(scaled.transform(Xt)) == yt).mean())
        grid = head.params.grid
        print(f"{kind:8s}: {grid.num}-value sweep ({grid.low:g}..{grid.high:g}) + refit on {n_all} x {X.shape[1]} "
              f"in {seconds:.1f} s; chosen l2 {l2:.4g} (C {C:.4g}); test top-1 {ours:.4f}")
        print(f"{'':8s}  scikit-learn LogisticRegression(C={C:.4g}) on train+val: test top-1 {theirs:.4f} "
              f"({ref_seconds:.1f} s); difference {100 * (ours - theirs):+.2f} points")


if __name__ == "__main__":
    main()
