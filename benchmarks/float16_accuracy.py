"""float16 against float32 feature storage: disk size and head accuracy, in one run.

    python benchmarks/float16_accuracy.py [--features data/features/pooled.h5]

Writes a float16 copy of a float32 feature file exactly as extraction with
``backbone.storage_dtype: float16`` stores it (features computed in float32, then cast), and trains
the logistic (params.yaml's C), linear and ridge heads on both. Prints sizes and test top-1.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import h5py
import numpy as np

from pipeline.core.config import load_params
from pipeline.core.head_registry import head_class
from pipeline.store.features import FeatureStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", default="data/features/pooled.h5")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = load_params(args.params)
    with tempfile.TemporaryDirectory() as tmp:
        half = Path(tmp) / "f16.h5"
        with h5py.File(args.features) as src, h5py.File(half, "w") as dst:
            dst.attrs.update(dict(src.attrs) | {"storage_dtype": "float16"})
            for split in src:
                g = dst.create_group(split)
                for name, dset in src[split].items():
                    data = dset[:].astype(np.float16) if name == "features" else dset[:]
                    g.create_dataset(name, data=data, dtype=data.dtype if name == "features" else dset.dtype,
                                     chunks=dset.chunks)
        print(f"file size: float32 {Path(args.features).stat().st_size / 2**20:.0f} MiB, "
              f"float16 {half.stat().st_size / 2**20:.0f} MiB")
        results = {}
        for label, path in (("float32", args.features), ("float16", half)):
            with FeatureStore(path) as store:
                (X, y), (Xt, yt) = store.load("train"), store.load("test")
            for kind in ("logistic", "linear", "ridge"):
                head = head_class(kind)(params.head.params_of(kind, "head"), seed=params.seed).fit(X, y, n_classes=int(y.max()) + 1)
                results[(kind, label)] = float((head.predict(Xt) == yt).mean())
        for kind in ("logistic", "linear", "ridge"):
            a, b = results[(kind, "float32")], results[(kind, "float16")]
            print(f"{kind:8s}: test top-1 float32 {a:.4f}, float16 {b:.4f}, difference {100 * (b - a):+.2f} points")


if __name__ == "__main__":
    main()
