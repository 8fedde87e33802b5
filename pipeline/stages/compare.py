"""Stage compare: one table (Markdown) and one chart (PNG) of every evaluated head configuration.

Each head is tested against the best one (highest test top-1) on the same test images, with the exact
McNemar test on their test predictions (the test_predictions.csv beside each metrics.json). A head that the
seeds stage refit with several seeds shows their mean and standard deviation beside its own figure.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

from pipeline import layout
from pipeline.config import Params
from pipeline.fileutil import atomic_files
from pipeline.errors import PipelineError
from pipeline.metrics import comparison_table, mcnemar_exact, plot_comparison


def correct_by_id(predictions_csv: Path) -> dict[str, bool]:
    """Whether each test image (by id) was predicted right, from an evaluate stage's test_predictions.csv."""
    with open(predictions_csv, newline="") as f:
        return {row["id"]: row["actual"] == row["predicted"] for row in csv.DictReader(f)}


def run(metrics_paths: list[str | Path], out_stem: str | Path, seeds_path: str | Path | None = None) -> list[dict]:
    """Rows of the given metrics.json files, best test top-1 first, each with its paired test against the
    best and (``seeds_path``: the seeds stage's summary) its spread over seeds; writes ``<out_stem>.md`` and
    ``.png``."""
    paths = [Path(p) for p in metrics_paths]
    rows = [json.loads(p.read_text()) | {"_predictions": p.parent / "test_predictions.csv"} for p in paths]
    if seeds_path is not None:
        summary = json.loads(Path(seeds_path).read_text())
        spread = {c["name"]: c | {"splits": summary["splits"]} for c in summary["configurations"].values()}
        for row in rows:
            if row["name"] in spread:
                row["seeds"] = spread[row["name"]]
    rows.sort(key=lambda r: -r["test"]["top1"])
    best = correct_by_id(rows[0].pop("_predictions"))
    for row in rows[1:]:
        mine = correct_by_id(row.pop("_predictions"))
        if mine.keys() != best.keys():
            raise PipelineError(f"{row['name']} and {rows[0]['name']} were not evaluated on the same test images: "
                                "re-run their evaluate stages (dvc repro)")
        ids = sorted(best)
        row["versus_best"] = mcnemar_exact(np.array([best[i] for i in ids]), np.array([mine[i] for i in ids]))
    out_stem = Path(out_stem)
    table = comparison_table(rows)
    with atomic_files(out_stem.parent) as staging:
        (staging / f"{out_stem.name}.md").write_text(table)
        plot_comparison(rows, staging / f"{out_stem.name}.png")
    print(table)
    return rows


def main(argv: list[str] | None = None) -> int:
    from pipeline.stages._cli import parser, run_stage

    args = parser(__doc__).parse_args(argv)

    def stage(params: Params, _) -> list[dict]:
        return run([layout.evaluation_dir(k) / layout.METRICS for k in params.head_keys()], layout.COMPARISON,
                   layout.SEEDS.with_suffix(".json"))

    return run_stage(args, stage)


if __name__ == "__main__":
    sys.exit(main())
