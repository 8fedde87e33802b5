"""Stage extract: run the frozen backbone f once over every image, cache what it computes to HDF5.

Writes the pooled features f(x) (``data/features/pooled.h5``) and, with ``backbone.cut`` set, in the same
pass, the activations at the input of that layer (``data/features/cut.h5``, the cut cache the fine-tuned
heads train on); with no cut, that file is a placeholder saying so. Under torchrun, each process extracts
its own shard and rank 0 writes the files.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np

from pipeline import layout
from pipeline.config import Params
from pipeline.errors import ConfigError
from pipeline.fileutil import atomic_path


def run(params: Params, splits_path: str | Path, pooled_path: str | Path, cut_path: str | Path | None = None,
        progress: bool = True) -> dict[str, Path] | None:
    """Extract every image of the prepared splits: the pooled features into ``pooled_path`` and, in the same
    pass, the cut cache into ``cut_path`` (a placeholder when ``backbone.cut`` is null; None: pooled features
    only). Returns the feature files written by name (None on ranks other than 0)."""
    from pipeline.backbones import load_backbone
    from pipeline.device import resolve_precision
    from pipeline.extract import OnePass, distributed, extract_features, feature_spec, tune_allocator
    from pipeline.sources import Splits, open_source

    tune_allocator()
    features = {"pooled": Path(pooled_path)} | ({"cut": Path(cut_path)} if cut_path is not None else {})
    b = params.backbone
    splits = Splits.load(splits_path)
    backbone = load_backbone(b.name, b.weights, b.input_size, seed=params.seed)
    backbone.check_input_size()  # before anything is written: a network with a fixed input size says so here
    model = OnePass(backbone, b.cut if "cut" in features else None)
    n = sum(len(s) for s in splits.splits.values())
    if model.bottom is not None:
        check_cut_size(model.bottom, n, b.cut_storage_dtype, b.cut_max_gib, features["cut"])
    dtypes = {"pooled": b.storage_dtype, "cut": b.cut_storage_dtype}
    start = time.perf_counter()
    with distributed() as (shard, device):
        precision = resolve_precision(b.precision, device)
        outputs = {name: (feature_spec(splits, extractor, b.weights, dtypes[name], params.seed, precision), features[name])
                   for name, extractor in model.extractors.items()}
        out = extract_features(
            splits, open_source(splits.source), model, outputs,
            batch_size=b.batch_size, num_workers=b.num_workers, skip_bad=b.on_bad_image == "skip",
            commit_rows=b.commit_rows, progress=progress, shard=shard, device=device, compile=b.compile,
        )
    if out is None:
        return None
    procs = f" by {shard.world_size} processes" if shard.world_size > 1 else ""
    print(f"extracted {n} images with {b.name} ({precision}){procs} in {time.perf_counter() - start:.1f} s -> "
          + ", ".join(map(str, out.values())))
    if "cut" not in out and "cut" in features:
        _placeholder(features["cut"], f"backbone.cut is null: no cut cache (cut points of {b.name}: "
                                      f"{_cut_points(backbone)})")
    return out


def _cut_points(backbone) -> str:
    """The backbone's cut points, for a message; a network torch.fx cannot trace has none to offer."""
    try:
        return str(backbone.cut_points())
    except Exception as err:  # torch.fx's own errors: control flow on values, unsupported calls, ...
        return f"none found: torch.fx cannot trace it ({type(err).__name__})"


def _placeholder(path: str | Path, reason: str) -> None:
    """The stage's output when there is nothing to compute: a feature file that says why."""
    import h5py

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs["placeholder"] = reason
    print(f"{reason}: nothing computed (placeholder {path})")


def check_cut_size(bottom, n_images: int, dtype: str, max_gib: float, out_path: Path) -> None:
    """State the cut cache's size before computing it; refuse one above ``max_gib`` or the free disk."""
    shape = "x".join(map(str, bottom.feature_shape))
    gib = n_images * bottom.feature_dim * np.dtype(dtype).itemsize / 2**30
    print(f"cut cache at the input of {bottom.cut}: {n_images} images x {shape} {dtype} = {gib:.2f} GiB")
    if gib > max_gib:
        raise ConfigError(
            f"the cut cache would take {gib:.1f} GiB, above backbone.cut_max_gib = {max_gib}: cut later in the "
            "network, store float16 (backbone.cut_storage_dtype), use fewer images (data.subset_per_class), "
            "or raise backbone.cut_max_gib"
        )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out_path.parent).free / 2**30
    if 2 * gib > free:  # the parts and the assembled file exist side by side for a moment
        raise ConfigError(f"the cut cache needs about {2 * gib:.1f} GiB of disk while it is assembled; "
                          f"{out_path.parent} has {free:.1f} GiB free")


def main(argv: list[str] | None = None) -> int:
    from pipeline.stages._cli import parser, run_stage

    p = parser(__doc__)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    return run_stage(args, lambda params, a: run(params, layout.SPLITS, layout.FEATURES["pooled"], layout.FEATURES["cut"],
                                                 progress=not a.no_progress))


if __name__ == "__main__":
    sys.exit(main())
