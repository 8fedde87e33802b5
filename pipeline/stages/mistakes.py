"""Mistakes, run by the report stage after compare (data side): the test images the main head and the best head get wrong, in pictures.

Reads each evaluated configuration's metrics.json (to find the best head: highest test top-1, the main
head on a tie), the test_predictions.csv of the main and the best head, and the test images by id from
the source in splits.json. Writes evaluation/mistakes/ as one set: for each of the two heads the grid of
its most confident mistakes (<role>_worst.png) and each class's most confused class with examples
(<role>_confused.png), and mistakes.md / mistakes.json listing them (see :mod:`pipeline.reports.mistakes`).
A head whose mistakes are the same as when its pictures were drawn (mistakes.json records a fingerprint;
the pictures are persistent DVC outputs) is not drawn again: swapping the main head redraws only it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pipeline.core import layout
from pipeline.core.config import MistakesParams, Params
from pipeline.core.fileutil import sha256_file
from pipeline.data.sources import Splits
from pipeline.reports.mistakes import (
    HeadMistakes,
    best_config,
    drawn_before,
    head_mistakes,
    load_thumbnails,
    write_report,
)


def run(settings: MistakesParams, splits_path: str | Path, evaluation_dirs: dict[str, str | Path],
        files: dict[str, Path] | None = None) -> list[HeadMistakes]:
    """``evaluation_dirs``: the evaluation folder of every configuration, by key, the main head (``head``)
    first. Returns the main and the best head's mistakes, as written."""
    splits = Splits.load(splits_path)
    dirs = {key: Path(d) for key, d in evaluation_dirs.items()}
    metrics = {key: json.loads((d / layout.METRICS).read_text()) for key, d in dirs.items()}
    best = best_config(metrics)
    heads = [head_mistakes(role, key, dirs[key], splits.classes, settings.grid_size, settings.examples_per_class)
             for role, key in zip(layout.MISTAKE_ROLES, ("head", best))]
    source = sha256_file(splits_path)  # the images behind the ids
    fingerprints = {m.role: m.fingerprint(settings.columns, settings.examples_per_class, source) for m in heads}
    files = files or layout.mistakes_files()
    keep = drawn_before(files, fingerprints)
    shown = {p.id for m in heads if m.role not in keep for p in [*m.worst, *(e for c in m.confusions for e in c.examples)]}
    images = load_thumbnails(splits, shown)
    files = write_report(heads, images, settings.columns, settings.examples_per_class, files, fingerprints, keep)
    if keep:
        print(f"mistakes of the {' and '.join(sorted(keep))} head unchanged: their pictures kept")
    for m in heads:
        print(f"{m.role} head {m.name} ({m.kind}): {m.n_wrong} of {m.n_test} test images wrong; the most confident "
              f"mistake: {m.worst[0].actual} taken for {m.worst[0].predicted} at {m.worst[0].confidence:.3f}"
              if m.worst else f"{m.role} head {m.name} ({m.kind}): no mistake on {m.n_test} test images")
    print(f"mistakes of {heads[0].name} and {heads[1].name} -> {files['report'].parent}/")
    return heads


def run_all(params: Params) -> list[HeadMistakes]:
    """The mistakes of the main and the best head, into the project's files."""
    return run(params.mistakes, layout.SPLITS, {key: layout.evaluation_dir(key) for key in params.head_keys()})


def main(argv: list[str] | None = None) -> int:
    from pipeline.core.cli import parser, run_stage

    args = parser(__doc__).parse_args(argv)
    return run_stage(args, lambda params, _: run_all(params))


if __name__ == "__main__":
    sys.exit(main())
