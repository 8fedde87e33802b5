"""Stage curves (head side): the learning curve, test top-1 against labelled training images per class.

Reads only the pooled feature file (never images or the backbone): every head of ``curves.heads`` is
fitted on k-shot sets drawn from the train split and scored on the test split (protocol:
docs/learning-curves.md and :mod:`pipeline.analyses.curves`). Writes evaluation/curves.md, curves.png,
curves.json (headline numbers), curves.csv (the DVC plot) and curve_draws.csv (every fit).
``--backbone NAME`` draws the curve of the compared backbone ``NAME`` instead (stage curves-backbone), from
its own cache, into evaluation/backbones/NAME/.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from pipeline.analyses.curves import learning_curve, summarise, write_outputs
from pipeline.core import layout
from pipeline.core.config import Params
from pipeline.store.features import FeatureStore, expected_spec


def run(params: Params, features_path: str | Path, splits_path: str | Path, stem: str | Path = layout.CURVES,
        draws_path: str | Path = layout.CURVE_DRAWS) -> dict:
    """The learning curve of the pooled feature file; returns the headline numbers."""
    curves = params.curves
    start = time.perf_counter()
    with FeatureStore(features_path) as store:
        store.check(expected_spec(params, splits_path, "pooled"))
        train, test = store.load("train"), store.load("test")
        n_classes, block_rows = len(store.spec.classes), store.block_rows()
        backbone = store.spec.backbone
    print(f"learning curve on {len(train[1])} training and {len(test[1])} test images of {n_classes} classes, "
          f"k in {curves.shots}, {curves.draws} draws, heads {list(curves.heads)}")
    fits = learning_curve(train, test, n_classes, curves, params.seed, block_rows=block_rows)
    points = summarise(fits, n_classes, curves.confidence)
    title = (f"learning curve: {backbone} features, {curves.draws} draws per k, "
             f"{round(100 * curves.confidence)}% t-interval")
    summary = write_outputs(fits, points, curves, params.seed, stem, draws_path, title)
    for target, needed in summary["labels_per_class_for"].items():
        print(f"labels per class to reach {target} of the k = all top-1: {needed}")
    print(f"best head per k: {summary['best_head']}")
    print(f"learning curve: {len(fits)} fits in {time.perf_counter() - start:.1f} s "
          f"-> {Path(stem)}.md, .png, .json, .csv")
    return summary


def main(argv: list[str] | None = None) -> int:
    from pipeline.core.cli import parser, run_stage

    p = parser(__doc__)
    p.add_argument("--backbone", help="a name of backbones.configurations: the curve of that compared backbone")
    args = p.parse_args(argv)

    def stage(params: Params, a) -> dict:
        if a.backbone is None:
            return run(params, layout.FEATURES["pooled"], layout.SPLITS)
        folder = layout.compared_dir(a.backbone)
        return run(params.with_backbone(a.backbone), layout.compared_features(a.backbone), layout.SPLITS,
                   folder / layout.CURVES.name, folder / layout.CURVE_DRAWS.name)

    return run_stage(args, stage)


if __name__ == "__main__":
    sys.exit(main())
