"""Stage curves-finetune (head side): the fine-tuned top on k labelled images per class, from the cut cache.

The configuration of ``curves_finetune.config`` (default: the first of ``finetune:``) trained on the k-shot
sets of the learning curve and scored on the test split (protocol: :mod:`pipeline.analyses.finetune_curve`). Writes
evaluation/curves_finetune.json: the points, what they cost and on which machine. With no fine-tuned
configuration it writes the same file saying it was skipped, without opening the cut cache.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from pipeline.analyses.finetune_curve import finetune_curve
from pipeline.core import layout
from pipeline.core.config import Params
from pipeline.core.device import describe_cpu
from pipeline.core.fileutil import write_json
from pipeline.store.features import FeatureStore, expected_spec


def run(params: Params, cut_path: str | Path, splits_path: str | Path, out: str | Path = layout.CURVES_FINETUNE) -> dict:
    config = params.curve_finetune_config()
    settings = params.curves_finetune
    summary: dict = {"config": None, "name": None, "skipped": None, "draws": settings.draws,
                     "min_steps": settings.min_steps, "points": []}
    if config is None:
        summary["skipped"] = "no fine-tuned configuration (finetune: is empty)"
        print(f"curves-finetune: skipped, {summary['skipped']} -> {out}")
    else:
        start = time.perf_counter()
        with FeatureStore(cut_path) as store:
            store.check(expected_spec(params, splits_path, "cut"))
            summary["points"] = finetune_curve(store, config, settings, params.seed)
        summary |= {"config": config.key, "name": layout.head_name(config.key),
                    "seconds": round(time.perf_counter() - start, 1), "machine": describe_cpu()}
        print(f"curves-finetune: {len(summary['points'])} fits of {config.key} in {summary['seconds']:.0f} s -> {out}")
    write_json(out, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    from pipeline.core.cli import parser, run_stage

    args = parser(__doc__).parse_args(argv)
    return run_stage(args, lambda params, _: run(params, layout.FEATURES["cut"], layout.SPLITS))


if __name__ == "__main__":
    sys.exit(main())
