"""Mistakes, run by the report stage after compare (data side): the test images the main head and the best head get wrong, in pictures.

Reads each evaluated configuration's metrics.json (to find the best head: highest test top-1, the main
head on a tie), the test_predictions.csv of the main and the best head, and the test images by id from
the source in splits.json. Writes evaluation/mistakes/ as one set: for each of the two heads the grid of
its most confident mistakes (<role>_worst.png) and each class's most confused class with examples
(<role>_confused.png), and mistakes.md / mistakes.json listing them (see :mod:`pipeline.reports.mistakes`).
A head whose mistakes are the same as when its pictures were drawn (mistakes.json records a fingerprint;
the pictures are persistent DVC outputs) is not drawn again: swapping the main head redraws only it.
The report stage runs compare while the images are read (``meanwhile``): reading them is one pass over the
dataset (an archive's test images come last), 0.5 to 1 s that compare's own second hides.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable

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
        files: dict[str, Path] | None = None, meanwhile: Callable[[], object] | None = None) -> list[HeadMistakes]:
    """``evaluation_dirs``: the evaluation folder of every configuration, by key, the main head (``head``)
    first. ``meanwhile``: other work, done while the images are read (:func:`read_meanwhile`). Returns the main
    and the best head's mistakes, as written."""
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
    images = read_meanwhile(splits, shown, meanwhile)
    files = write_report(heads, images, settings.columns, settings.examples_per_class, files, fingerprints, keep)
    if keep:
        print(f"mistakes of the {' and '.join(sorted(keep))} head unchanged: their pictures kept")
    for m in heads:
        print(f"{m.role} head {m.name} ({m.kind}): {m.n_wrong} of {m.n_test} test images wrong; the most confident "
              f"mistake: {m.worst[0].actual} taken for {m.worst[0].predicted} at {m.worst[0].confidence:.3f}"
              if m.worst else f"{m.role} head {m.name} ({m.kind}): no mistake on {m.n_test} test images")
    print(f"mistakes of {heads[0].name} and {heads[1].name} -> {files['report'].parent}/")
    return heads


def read_meanwhile(splits: Splits, ids: set[str], meanwhile: Callable[[], object] | None) -> dict:
    """The thumbnails of the test images ``ids`` (:func:`load_thumbnails`), read in a forked process while
    ``meanwhile()`` runs here, on Linux; elsewhere (fork is unsafe on macOS, absent on Windows) or with nothing
    to read, one after the other. ``meanwhile``'s error comes first, as when it runs first; a reader that died
    (killed for memory, say) is read again here, which raises its error or returns the images."""
    if not ids or meanwhile is None or not sys.platform.startswith("linux"):
        if meanwhile is not None:
            meanwhile()
        return load_thumbnails(splits, ids)
    with warnings.catch_warnings():
        # Python 3.12+ warns of fork in a process with threads (here OpenBLAS's, idle): the child runs the
        # archive reader and Pillow only, nothing that takes a lock those threads could hold.
        warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
        reader = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
        images = reader.submit(load_thumbnails, splits, ids)
    with reader:
        meanwhile()
        try:
            return images.result()
        except BrokenProcessPool:
            return load_thumbnails(splits, ids)


def run_all(params: Params, meanwhile: Callable[[], object] | None = None) -> list[HeadMistakes]:
    """The mistakes of the main and the best head, into the project's files; ``meanwhile`` as for :func:`run`."""
    return run(params.mistakes, layout.SPLITS, {key: layout.evaluation_dir(key) for key in params.head_keys()},
               meanwhile=meanwhile)


def main(argv: list[str] | None = None) -> int:
    from pipeline.core.cli import parser, run_stage

    args = parser(__doc__).parse_args(argv)
    return run_stage(args, lambda params, _: run_all(params))


if __name__ == "__main__":
    sys.exit(main())
