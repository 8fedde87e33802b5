"""Stage probe-backbone (head side): how well one compared backbone's cached features serve the task.

``--backbone NAME``: on the pooled cache of ``backbones.configurations.NAME`` (written by
extract-backbone), fits every head of ``backbones.heads`` and scores it on the test split (and on the
validation split when it was fitted on train alone: the k-NN head's val top-1 is the cheap estimate of
transfer), and computes LogME on the training split. Writes ``evaluation/backbones/NAME/probe.json``
(read by compare-backbones). Reads only the feature store.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from pipeline.core import layout
from pipeline.core.config import Params
from pipeline.core.fileutil import write_json
from pipeline.core.head_registry import build_head
from pipeline.heads.base import fit_and_score
from pipeline.store.features import FeatureStore, expected_spec


def run(params: Params, name: str, features_path: str | Path, splits_path: str | Path, out_path: str | Path) -> dict:
    """Fit and score the comparison's heads on compared backbone ``name``'s cache, and its LogME."""
    from pipeline.analyses.transferability import logme

    compared = params.with_backbone(name)
    results: dict = {}
    with FeatureStore(features_path) as store:
        store.check(expected_spec(compared, splits_path))
        results["feature_dim"] = store.spec.feature_dim
        start = time.perf_counter()
        X, y = store.load("train")
        results["logme"] = round(logme(X, y).score, 6)
        results["logme_seconds"] = round(time.perf_counter() - start, 2)
        del X
        results["heads"] = {}
        for config in params.backbones.head_configs():
            fitted = fit_and_score(build_head(config, seed=params.seed), store, splits=("val", "test"))
            figures: dict = {"fit_seconds": round(fitted.fit_seconds, 2)}
            figures |= {f"{split}_top1": round(t, 6) for split, t in fitted.top1.items()}
            results["heads"][config.key.rpartition(".")[2]] = figures
    write_json(out_path, results)
    scores = ", ".join(f"{h} test top-1 {f['test_top1']:.4f}" + (f" (val {f['val_top1']:.4f})" if "val_top1" in f else "")
                       for h, f in results["heads"].items())
    print(f"probed {name}: LogME {results['logme']:.4f}, {scores} -> {out_path}")
    return results


def main(argv: list[str] | None = None) -> int:
    from pipeline.core.cli import parser, run_stage

    p = parser(__doc__)
    p.add_argument("--backbone", required=True, help="a name of backbones.configurations")
    args = p.parse_args(argv)
    return run_stage(args, lambda params, a: run(params, a.backbone, layout.compared_features(a.backbone), layout.SPLITS,
                                                 layout.compared_dir(a.backbone) / layout.COMPARED_PROBE))


if __name__ == "__main__":
    sys.exit(main())
