"""Stage evaluate (head side): metrics and plots of one trained head on the val and test splits.

Writes, as one set (all of them or none): metrics.json (the few figures a user compares, each split's
saying which images it was measured on), details.json (per-class accuracy, confusion matrices),
test_predictions.csv (the DVC confusion plot, and what compare pairs heads on), per_class.csv (a DVC
plot), confusion.png, reliability.png, and sweep.json for a swept head. No figure is measured on
images the head was fitted on: a swept head, refit on train + val, reports the sweep's held-out
val figure instead.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from pipeline import layout
from pipeline.config import Params
from pipeline.errors import FeatureStoreError
from pipeline.features import FeatureStore
from pipeline.fileutil import atomic_files, write_json
from pipeline.heads import load_head, softmax
from pipeline.metrics import calibration, classification_metrics, plot_confusion, plot_reliability


def scores_by_split(head, store: FeatureStore) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(scores, labels) of every split the head can be measured on (val when it has images and the head
    was not fitted on it, test)."""
    out = {}
    for split in ("val", "test"):
        if split in head.fitted_on:
            continue
        blocks = [(head.decision_function(X), y) for X, y in store.iter_blocks(split)]
        if blocks:
            out[split] = (np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks]))
    if "test" not in out:
        raise FeatureStoreError(f"{store.path} has no test images to evaluate on")
    return out


def run(features_path: str | Path, head_path: str | Path, out_dir: str | Path, name: str = "head") -> dict:
    head, meta = load_head(head_path)
    with FeatureStore(features_path) as store:
        store.check_head(meta, head_path)
        classes = list(store.spec.classes)
        scores = scores_by_split(head, store)
        test_ids = store.ids("test")
    results: dict = {"name": name, "head": head.kind}
    details: dict = {"classes": classes}
    reliability = {}
    for split, (split_scores, y) in scores.items():
        results[split], details[split] = classification_metrics(split_scores, y, classes)
        reliability[split] = calibration(softmax(split_scores), y)
        results[split]["ece"] = reliability[split]["ece"]
        results[split]["on"] = split
    if "val" in head.fitted_on and "chosen_val_top1" in head.info:
        results["val"] = {"top1": head.info["chosen_val_top1"], "on": "sweep: val before the refit on train + val"}
    results["fit_seconds"] = round(meta.get("fit_seconds", float("nan")), 3)
    results["chosen"] = {k: v for k, v in head.chosen.items() if k != "chosen_val_top1"}
    title = f"{name} ({head.kind}), test top-1 {results['test']['top1']:.3f}"
    with atomic_files(out_dir) as staging:
        write_json(staging / layout.METRICS, results)
        write_json(staging / "details.json", details)
        with open(staging / "per_class.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["class", "accuracy"])
            writer.writerows((c, a) for c, a in details["test"]["per_class_accuracy"].items() if a is not None)
        if "sweep" in head.info:
            sweep = head.info["sweep"]
            write_json(staging / "sweep.json", [{"l2": l2, "val_top1": acc} for l2, acc in zip(sweep["l2"], sweep["val_top1"])])
        test_scores, test_labels = scores["test"]
        with open(staging / "test_predictions.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "actual", "predicted"])
            writer.writerows((i, classes[a], classes[p]) for i, a, p in zip(test_ids, test_labels, test_scores.argmax(axis=1)))
        plot_confusion(np.array(details["test"]["confusion_matrix"]), classes, staging / "confusion.png", title)
        plot_reliability(reliability["test"], staging / "reliability.png", title)
    summary = ", ".join(f"{s} top-1 {results[s]['top1']:.4f}" for s in scores)
    print(f"evaluated {name} ({head.kind}): {summary}, test ECE {results['test']['ece']:.4f} -> {out_dir}")
    return results


def main(argv: list[str] | None = None) -> int:
    from pipeline.stages._cli import head_parser, run_stage

    args = head_parser(__doc__).parse_args(argv)

    def stage(params: Params, a) -> dict:
        features = layout.FEATURES[params.head_config(a.config).params.input]
        return run(features, layout.head_file(a.config), layout.evaluation_dir(a.config), layout.head_name(a.config))

    return run_stage(args, stage)


if __name__ == "__main__":
    sys.exit(main())
