"""Stage extract (and extract-cut): run the frozen backbone f once over every image, cache it to HDF5.

``extract`` caches the pooled features f(x); ``extract --cut`` the activations at the input of
``backbone.cut`` (the cut cache the fine-tuned heads train on). Under torchrun, each process
extracts its own shard and rank 0 writes the file.
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


def run(params: Params, splits_path: str | Path, features_path: str | Path, progress: bool = True,
        cut: bool = False) -> Path | None:
    """Extract every image of the prepared splits; with ``cut``, only the backbone below ``backbone.cut``.
    Returns the feature file (None on ranks other than 0, and for the cut placeholder)."""
    from pipeline.backbones import load_backbone
    from pipeline.extract import distributed, extract_features, feature_spec, tune_allocator
    from pipeline.sources import Splits, open_source

    tune_allocator()
    b = params.backbone
    splits = Splits.load(splits_path)
    backbone = load_backbone(b.name, b.weights, b.input_size, seed=params.seed)
    if cut and b.cut is None:
        return _placeholder(features_path, f"backbone.cut is null: no cut cache (cut points of {b.name}: "
                                           f"{_cut_points(backbone)})")
    backbone.check_input_size()  # before anything is written: a network with a fixed input size says so here
    dtype = b.storage_dtype
    if cut:
        backbone, _ = backbone.cut_at(b.cut)
        dtype = b.cut_storage_dtype
        check_cut_size(backbone, sum(len(s) for s in splits.splits.values()), dtype, b.cut_max_gib, Path(features_path))
    spec = feature_spec(splits, backbone, b.weights, dtype, init_seed=params.seed)
    start = time.perf_counter()
    with distributed() as (shard, device):
        out = extract_features(
            splits, open_source(splits.source), backbone, spec, features_path,
            batch_size=b.batch_size, num_workers=b.num_workers, skip_bad=b.on_bad_image == "skip",
            commit_rows=b.commit_rows, progress=progress, shard=shard, device=device, compile=b.compile,
        )
    if out is not None:
        n = sum(len(s) for s in splits.splits.values())
        procs = f" by {shard.world_size} processes" if shard.world_size > 1 else ""
        what = f"{b.name} up to {b.cut}" if cut else b.name
        print(f"extracted {n} images with {what}{procs} in {time.perf_counter() - start:.1f} s -> {out}")
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
    p.add_argument("--cut", action="store_true", help="cache the activations at backbone.cut (the cut cache)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    what = "cut" if args.cut else "pooled"
    return run_stage(args, lambda params, a: run(params, layout.SPLITS, layout.FEATURES[what],
                                                 progress=not a.no_progress, cut=a.cut))


if __name__ == "__main__":
    sys.exit(main())
