"""Stage extract: run the frozen backbone f once over every image, cache what it computes to HDF5.

Writes the pooled features f(x) (``data/features/pooled.h5``) and, with ``backbone.cut`` set, in the same
pass, the activations at the input of that layer (``data/features/cut.h5``, the cut cache the fine-tuned
heads train on); with no cut, that file is a placeholder saying so. Under torchrun, each process extracts
its own shard and rank 0 writes the files.

``--backbone NAME`` extracts the compared backbone ``backbones.configurations.NAME`` instead (stage
extract-backbone): its pooled features only, into ``data/features/backbones/NAME.h5``, and what the
extraction cost (images/s, parameters, cache size) into ``evaluation/backbones/NAME/extract.json``.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core import layout
from pipeline.core.config import Params
from pipeline.core.errors import ConfigError
from pipeline.core.fileutil import atomic_path, write_json


@dataclass(frozen=True)
class Extraction:
    """What one extraction wrote and what it cost."""

    files: dict[str, Path]
    """The feature files written, by name (pooled, cut)."""
    images: int
    seconds: float
    parameters: int
    """Of the frozen network (the classifier it had is not part of it)."""
    precision: str
    input_size: int
    """The crop the network saw, in pixels (the native one when ``input_size`` is null)."""


def run(params: Params, splits_path: str | Path, pooled_path: str | Path, cut_path: str | Path | None = None,
        progress: bool = True) -> Extraction | None:
    """Extract every image of the prepared splits: the pooled features into ``pooled_path`` and, in the same
    pass, the cut cache into ``cut_path`` (a placeholder when ``backbone.cut`` is null; None: pooled features
    only). None on ranks other than 0."""
    from pipeline.backbone.backbones import load_backbone
    from pipeline.backbone.extract import OnePass, distributed, extract_features, feature_spec, tune_allocator
    from pipeline.core.device import resolve_precision
    from pipeline.data.sources import Splits, open_source

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
        outputs = {name: (feature_spec(splits, extractor, b.weights, dtypes[name], params.seed, precision, params.data.decode),
                          features[name])
                   for name, extractor in model.extractors.items()}
        out = extract_features(
            splits, open_source(splits.source), model, outputs,
            batch_size=b.batch_size, num_workers=b.num_workers, skip_bad=b.on_bad_image == "skip",
            commit_rows=b.commit_rows, progress=progress, shard=shard, device=device, compile=b.compile,
        )
    if out is None:
        return None
    seconds = time.perf_counter() - start
    procs = f" by {shard.world_size} processes" if shard.world_size > 1 else ""
    print(f"extracted {n} images with {b.name} ({precision}){procs} in {seconds:.1f} s ({n / seconds:.1f} images/s) -> "
          + ", ".join(map(str, out.values())))
    if "cut" not in out and "cut" in features:
        _placeholder(features["cut"], f"backbone.cut is null: no cut cache (cut points of {b.name}: "
                                      f"{_cut_points(backbone)})")
    return Extraction(out, n, seconds, sum(p.numel() for p in backbone.parameters()), precision,
                      backbone.preprocessing.geometry.crop_size)


def run_compared(params: Params, name: str, splits_path: str | Path, features_path: str | Path,
                 summary_path: str | Path, progress: bool = True) -> dict | None:
    """Extract the compared backbone ``name`` (pooled features only) and write what it cost to
    ``summary_path``; returns that summary (None on ranks other than 0)."""
    from pipeline.core.device import describe_cpu

    compared = params.with_backbone(name)
    done = run(compared, splits_path, features_path, progress=progress)
    if done is None:
        return None
    b = compared.backbone
    summary = {
        "backbone": b.name, "weights": b.weights, "input_size": done.input_size, "images": done.images,
        "seconds": round(done.seconds, 1), "images_per_second": round(done.images / done.seconds, 1),
        "parameters": done.parameters, "cache_mib": round(os.path.getsize(features_path) / 2**20, 1),
        "precision": done.precision, "machine": f"{describe_cpu()}; {os.cpu_count()} cores",
    }
    write_json(summary_path, summary)
    return summary


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
    from pipeline.core.cli import parser, run_stage

    p = parser(__doc__)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--backbone", help="a name of backbones.configurations: extract that compared backbone")
    args = p.parse_args(argv)

    def stage(params: Params, a) -> object:
        if a.backbone is None:
            return run(params, layout.SPLITS, layout.FEATURES["pooled"], layout.FEATURES["cut"], progress=not a.no_progress)
        return run_compared(params, a.backbone, layout.SPLITS, layout.compared_features(a.backbone),
                            layout.compared_dir(a.backbone) / layout.COMPARED_EXTRACTION, progress=not a.no_progress)

    return run_stage(args, stage)


if __name__ == "__main__":
    sys.exit(main())
