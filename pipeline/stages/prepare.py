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
    print(f"prepared {d.source}: {len(splits.classes)} classes, {counts}")
    return counts


def main(argv: list[str] | None = None) -> int:
    from pipeline.stages._cli import parser, run_stage

    args = parser(__doc__).parse_args(argv)
    return run_stage(args, lambda params, _: run(params, layout.SPLITS))


if __name__ == "__main__":
    sys.exit(main())
