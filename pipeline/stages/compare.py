"""Compare, run first by the report stage: one table (Markdown) and one chart (PNG) of every evaluated head
configuration.

Each head is tested against the best one (highest test top-1) on the same test images, with the exact
McNemar test on their test predictions (the test_predictions.csv beside each metrics.json). Beside the
test top-1 of every head stands its top-1 on the test images that have no confirmed near-copy in the
images heads are fitted on (train, val), read from the ids of the leakage stage's pairs.csv, and its top-1 on
those that also have no possible one (a pair just below the decision): the two bound what copies could change.
A head that the seeds stages refit with several seeds shows their mean and standard deviation beside its
own figure: compare first gathers the fits of every seed of ``seeds.values`` (evaluation/summary/seeds/) into
evaluation/seeds.json and seeds.md (:func:`gather_seeds`). The chart marks the head chosen on validation
(highest held-out val top-1). comparison.json holds the rows, that choice and the exact McNemar test of
every pair of heads, for the report page. Also writes evaluation/top1.json, the DVC metric: every head's test
top-1 by name.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from pipeline.analyses.leakage import near_copies, read_pairs
from pipeline.analyses.seeds import read_fits, summarise, write_outputs
from pipeline.core import layout
from pipeline.core.config import Params
from pipeline.core.errors import PipelineError
from pipeline.core.fileutil import atomic_files, write_json
from pipeline.heads.metrics import chosen_on_validation, mcnemar_exact, wilson_interval
from pipeline.reports.figures import comparison_table, plot_comparison
from pipeline.store.predictions import read_predictions


def gather_seeds(params: Params, fits_dir: str | Path = layout.SEED_FITS, stem: str | Path = layout.SEEDS) -> dict:
    """The spread over seeds from the file of each seed of ``seeds.values`` in ``fits_dir``, written to
    ``<stem>.json`` and ``.md`` (with no seed: a summary and a page saying it is off)."""
    fits = []
    for seed in params.seeds.values:
        path = layout.seed_fits_file(seed, fits_dir)
        if not path.exists():
            raise PipelineError(f"no fits for seed {seed} ({path}): run its stage, dvc repro seeds@{seed}")
        fits += read_fits(path)
    summary = summarise(fits, params.seeds, params.data.val_fraction)
    write_outputs(summary, stem)
    return summary


def correct_by_id(predictions_csv: Path) -> dict[str, bool]:
    """Whether each test image (by id) was predicted right, from an evaluate stage's test_predictions.csv."""
    return {p.id: not p.wrong for p in read_predictions(predictions_csv)}


def without(correct: dict[str, bool], removed: set[str]) -> dict:
    """Top-1 (with its 95% Wilson interval) on the images of ``correct`` (id -> predicted right) not in
    ``removed``, and how many were removed."""
    kept = [ok for i, ok in correct.items() if i not in removed]
    low, high = wilson_interval(sum(kept), len(kept))
    top1 = sum(kept) / len(kept) if kept else float("nan")
    return {"n": len(kept), "removed": len(correct) - len(kept), "top1": top1, "top1_low": low, "top1_high": high}


def run(metrics_paths: list[str | Path], out_stem: str | Path, pairs_path: str | Path | None = None,
        seeds_path: str | Path | None = None) -> list[dict]:
    """Rows of the given metrics.json files, best test top-1 first, each with its paired test against the
    best, with ``pairs_path`` (the leakage stage's pairs.csv) its test top-1 without the test images that
    have a confirmed near-copy in train or val, and with ``seeds_path`` (the seeds stage's summary) its
    spread over seeds; writes ``<out_stem>.md``, ``.png`` and ``.json`` (the rows, the head chosen on
    validation and the McNemar test of every pair)."""
    paths = [Path(p) for p in metrics_paths]
    rows = [json.loads(p.read_text()) | {"_predictions": p.parent / layout.TEST_PREDICTIONS} for p in paths]
    if seeds_path is not None:
        summary = json.loads(Path(seeds_path).read_text())
        spread = {c["name"]: c | {"splits": summary["splits"]} for c in summary["configurations"].values()}
        for row in rows:
            if row["name"] in spread:
                row["seeds"] = spread[row["name"]]
    rows.sort(key=lambda r: -r["test"]["top1"])
    flagged = None if pairs_path is None else read_pairs(pairs_path, flagged_only=True)
    removed = None if flagged is None else near_copies(flagged)
    removed_too = None if flagged is None else near_copies(flagged, possible=True)
    correct = [correct_by_id(row.pop("_predictions")) for row in rows]
    best = correct[0]
    if removed_too is not None and (stale := removed_too - best.keys()):
        raise PipelineError(f"{pairs_path} names test images that {rows[0]['name']} was not evaluated on "
                            f"({sorted(stale)[:3]}): re-run the leakage and evaluate stages (dvc repro)")
    for row, mine in zip(rows, correct):
        if mine.keys() != best.keys():
            raise PipelineError(f"{row['name']} and {rows[0]['name']} were not evaluated on the same test images: "
                                "re-run their evaluate stages (dvc repro)")
        if removed is not None:
            row["test_without_near_copies"] = without(mine, removed)
            row["test_without_possible_copies"] = without(mine, removed_too)
    ids = sorted(best)
    right = [np.array([c[i] for i in ids]) for c in correct]
    pairs = []
    for a in range(len(rows)):
        for b in range(a + 1, len(rows)):
            test = mcnemar_exact(right[a], right[b])
            pairs.append({"first": rows[a]["name"], "second": rows[b]["name"], **test})
            if a == 0:
                rows[b]["versus_best"] = test
    chosen = chosen_on_validation(rows)
    out_stem = Path(out_stem)
    table = comparison_table(rows)
    with atomic_files(out_stem.parent) as staging:
        (staging / f"{out_stem.name}.md").write_text(table)
        plot_comparison(rows, staging / f"{out_stem.name}.png", None if chosen is None else chosen["name"])
        write_json(staging / f"{out_stem.name}.json",
                   {"rows": rows, "chosen_on_validation": None if chosen is None else chosen["name"], "mcnemar": pairs})
        write_json(staging / layout.TOP1.name, {row["name"]: round(row["test"]["top1"], 4)
                                                 for row in sorted(rows, key=lambda r: r["name"])})
    print(table)
    return rows


def run_all(params: Params) -> list[dict]:
    """The seeds gathered, then every trained head compared, into the project's files."""
    gather_seeds(params)
    return run([layout.evaluation_dir(k) / layout.METRICS for k in params.head_keys()], layout.COMPARISON,
               layout.LEAKAGE_PAIRS, layout.SEEDS.with_suffix(".json"))


def main(argv: list[str] | None = None) -> int:
    from pipeline.core.cli import parser, run_stage

    args = parser(__doc__).parse_args(argv)
    return run_stage(args, lambda params, _: run_all(params))


if __name__ == "__main__":
    sys.exit(main())
