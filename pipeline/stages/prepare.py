"""Stage prepare: list the dataset and carve the train / val / test splits (data side)."""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.core import layout
from pipeline.core.config import Params
from pipeline.data.sources import (
    CLASS_LAYOUT,
    LABEL_LAYOUT,
    SPLIT_LAYOUT,
    SPLIT_NAMES,
    LabelFile,
    make_splits,
    open_source,
)


def run(params: Params, splits_path: str | Path) -> dict[str, int]:
    d = params.data
    labels = LabelFile(**d.labels.model_dump()) if d.labels.file is not None else None
    splits = make_splits(open_source(d.source), d.val_fraction, d.subset_per_class, params.seed,
                         test_fraction=d.test_fraction, test_seed=d.test_seed, labels=labels)
    splits.save(splits_path)
    counts = {n: len(s) for n, s in splits.splits.items()}
    print(f"prepared {d.source}: {_found(splits.found)}; {len(splits.classes)} classes, {counts}")
    print(describe_layout(splits.settings, splits.found, labels))
    return counts


def describe_layout(settings: dict, found: dict, labels: LabelFile | None) -> str:
    """``layout: class folders (<root>/<class>/<image>); test carved: ...; val carved: ...``."""
    name = settings.get("layout", SPLIT_LAYOUT)
    shape = {SPLIT_LAYOUT: "<root>/train|val|test/<class>/<image>", CLASS_LAYOUT: "<root>/<class>/<image>",
             LABEL_LAYOUT: f"{labels.file if labels else 'a label file'}: columns {_columns(labels)}"}[name]
    parts = [f"layout: {name} ({shape})"]
    if "test_fraction" in settings:
        parts.append(f"test carved: {settings['test_fraction']:g} of each class (data.test_fraction), "
                     f"seeded by data.test_seed = {settings['test_seed']}")
    else:
        parts.append("test as given")
    if settings.get("val") == "given":
        parts.append("val as given (data.val_fraction not used)")
    else:
        parts.append(f"val carved from train: {settings['val_fraction']:g} of each class (data.val_fraction), "
                     f"seeded by seed = {settings['seed']}")
    if labels is not None and labels.group_column:
        parts.append(f"groups ({labels.group_column!r}) kept whole when carving")
    for reason, n in found.get("left_out", {}).items():
        parts.append(f"{n} images left out: {reason}")
    if untested := found.get("no_test_images"):
        parts.append(f"classes without test images (too few images to carve one: a class needs two): {untested}")
    return "; ".join(parts)


def _columns(labels: LabelFile | None) -> str:
    if labels is None:
        return ""
    named = {"path": labels.path_column, "label": labels.label_column, "split": labels.split_column,
             "group": labels.group_column}
    return ", ".join(f"{role} = {col!r}" for role, col in named.items() if col)


def _found(found: dict[str, dict[str, int]]) -> str:
    """``found train: 120 images (20 in sub-folders of class folders), test: 40 images``, or ``found 160
    images`` when no split is given."""
    parts = []
    for split, n in found.items():
        if split not in (*SPLIT_NAMES, "all"):
            continue
        deeper = f" ({n['in_sub_folders']} in sub-folders of class folders)" if n["in_sub_folders"] else ""
        parts.append(f"{'' if split == 'all' else split + ': '}{n['images']} images{deeper}")
    return "found " + ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    from pipeline.core.cli import parser, run_stage

    args = parser(__doc__).parse_args(argv)
    return run_stage(args, lambda params, _: run(params, layout.SPLITS))


if __name__ == "__main__":
    sys.exit(main())
