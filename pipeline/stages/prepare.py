"""Stage prepare: list the dataset and carve the train / val / test splits (data side)."""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline import layout
from pipeline.config import Params
from pipeline.sources import make_splits, open_source


def run(params: Params, splits_path: str | Path) -> dict[str, int]:
    d = params.data
    splits = make_splits(open_source(d.source), d.val_fraction, d.subset_per_class, params.seed)
    splits.save(splits_path)
    counts = {n: len(s) for n, s in splits.splits.items()}
    print(f"prepared {d.source}: {_found(splits.found)}; {len(splits.classes)} classes, {counts}")
    return counts


def _found(found: dict[str, dict[str, int]]) -> str:
    """``found train: 120 images (20 in sub-folders of class folders), test: 40 images``."""
    parts = []
    for split, n in found.items():
        deeper = f" ({n['in_sub_folders']} in sub-folders of class folders)" if n["in_sub_folders"] else ""
        parts.append(f"{split}: {n['images']} images{deeper}")
    return "found " + ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    from pipeline.stages._cli import parser, run_stage

    args = parser(__doc__).parse_args(argv)
    return run_stage(args, lambda params, _: run(params, layout.SPLITS))


if __name__ == "__main__":
    sys.exit(main())
