"""Evaluate (head side), run by the train stages after each fit: the metrics of one trained head on the
val and test splits, from its saved file (as predict and export load it); ``python -m pipeline.stages.evaluate
--config KEY`` evaluates a saved head again on its own.

Writes, as one set (all of them or none): metrics.json (every figure of the head, each split's saying
which images it was measured on), details.json (per-class accuracy, confusion matrices, the reliability
diagram's statistics, and a swept head's validation top-1 at each penalty), test_predictions.csv (id,
actual, predicted, confidence: the DVC confusion plot, what compare pairs heads on and what the mistakes
stage pictures), per_class.csv (a DVC plot); then evaluation/summary/<name>.json (:func:`summary`). It draws
no picture (the report draws the chosen head's reliability diagram): a head swap's train stage imports no
matplotlib. No figure is measured on images the head was fitted on: a swept head, refit on train + val,
reports the sweep's held-out val figure instead.

Probabilities are the head's own (:meth:`~pipeline.heads.base.Head.probabilities`): for a calibrated head,
softmax(scores / T). Its ``ece`` is then the calibrated one, ``ece_uncalibrated`` that of softmax(scores),
and ``chosen.temperature`` is T. T was fitted on the validation split, so there the calibrated ECE is not
reported (only ``ece_uncalibrated``).

Whatever ``calibrate`` says, every head with a validation split it was not fitted on also gets a temperature
fitted there (the same fit as calibration's): ``temperature_on_val`` is it, and ``test.ece_calibrated`` the
test ECE of softmax(scores / T), so that the report can show calibration before and after for every head.
Predictions and the head's own probabilities do not change unless ``calibrate`` is true.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from pipeline.core import layout
from pipeline.core.config import Params
from pipeline.core.errors import FeatureStoreError
from pipeline.core.fileutil import atomic_files, write_json
from pipeline.heads.base import load_head, softmax, split_scores
from pipeline.heads.calibration import fit_temperature
from pipeline.heads.metrics import calibration, classification_metrics
from pipeline.store.features import FeatureStore
from pipeline.store.predictions import write_predictions


def scores_by_split(head, store: FeatureStore) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(scores, labels) of every split the head can be measured on (val when it has images and the head
    was not fitted on it, test)."""
    out = {}
    for split in ("val", "test"):
        if split in head.fitted_on:
            continue
        scored = split_scores(head, store, split)
        if scored is not None:
            out[split] = scored
    if "test" not in out:
        raise FeatureStoreError(f"{store.path} has no test images to evaluate on")
    return out


def summary(results: dict) -> dict:
    """The few figures of a head: the test ECE (calibrated when the head is), test top-1 and its 95%
    Wilson interval, and the held-out val top-1 (the sweep's for a swept head)."""
    test, val = results["test"], results.get("val", {})
    out = {"test_ece": round(test["ece"], 4), "test_top1": round(test["top1"], 4)}
    if "top1_low" in test:
        out["test_top1_95ci"] = f"{test['top1_low']:.3f}-{test['top1_high']:.3f}"
    if "top1" in val:
        out["val_top1"] = round(val["top1"], 4)
    return out


def temperature_on_val(scores: dict[str, tuple[np.ndarray, np.ndarray]]) -> float | None:
    """The temperature fitted on the validation scores (as calibration fits it); None without a held-out
    validation split, or when some validation image scores -inf for its own class."""
    if "val" not in scores:
        return None
    try:
        return fit_temperature(*scores["val"])
    except ValueError:
        return None


def run(features_path: str | Path, head_path: str | Path, out_dir: str | Path, name: str = "head",
        summary_path: str | Path | None = None) -> dict:
    head, meta = load_head(head_path)
    with FeatureStore(features_path) as store:
        store.check_head(meta, head_path)
        classes = list(store.spec.classes)
        scores = scores_by_split(head, store)
        test_ids = store.ids("test")
    results: dict = {"name": name, "head": head.kind}
    details: dict = {"classes": classes}
    if head.fitted.sweep is not None:  # validation top-1 at each penalty of the sweep
        sweep = head.fitted.sweep
        details["sweep"] = [{"l2": l2, "val_top1": acc} for l2, acc in zip(sweep["l2"], sweep["val_top1"])]
    reliability, uncalibrated = {}, {}
    calibrated = head.temperature is not None
    for split, (raw, y) in scores.items():
        results[split], details[split] = classification_metrics(raw, y, classes)
        reliability[split] = calibration(head.probabilities(raw), y)
        if calibrated:
            uncalibrated[split] = calibration(softmax(raw), y)
            if split != "val":  # the temperature was fitted there
                results[split]["ece"] = reliability[split]["ece"]
            results[split]["ece_uncalibrated"] = uncalibrated[split]["ece"]
        else:
            results[split]["ece"] = reliability[split]["ece"]
        results[split]["on"] = split
    if "val" in head.fitted_on and head.fitted.chosen_val_top1 is not None:
        results["val"] = {"top1": head.fitted.chosen_val_top1, "on": "sweep: val before the refit on train + val"}
    fitted_t = head.temperature if calibrated else temperature_on_val(scores)
    scaled = None if fitted_t is None else calibration(softmax(scores["test"][0] / fitted_t), scores["test"][1])
    if scaled is not None:
        results["temperature_on_val"] = fitted_t
        results["test"]["ece_calibrated"] = scaled["ece"]
    results["fit_seconds"] = round(meta.get("fit_seconds", float("nan")), 3)
    results["chosen"] = {k: v for k, v in head.chosen.items() if k != "chosen_val_top1"}
    if calibrated:
        results["chosen"]["temperature"] = head.temperature
    # the reliability diagram's statistics (the report draws it): calibrated or not, and with a temperature
    # fitted on val but not applied
    details["reliability"] = {"test": reliability["test"], "uncalibrated": uncalibrated.get("test"),
                              "temperature": head.temperature, "with_temperature_on_val": None if calibrated else scaled}
    with atomic_files(out_dir) as staging:
        write_json(staging / layout.METRICS, results)
        write_json(staging / layout.DETAILS, details)
        with open(staging / "per_class.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["class", "accuracy"])
            writer.writerows((c, a) for c, a in details["test"]["per_class_accuracy"].items() if a is not None)
        test_scores, test_labels = scores["test"]
        proba = head.probabilities(test_scores)
        predicted = test_scores.argmax(axis=1)
        write_predictions(staging / layout.TEST_PREDICTIONS,
                          ((i, classes[a], classes[p], proba[k, p])
                           for k, (i, a, p) in enumerate(zip(test_ids, test_labels, predicted))))
    if summary_path is not None:
        write_json(summary_path, summary(results))
    said = ", ".join(f"{s} top-1 {results[s]['top1']:.4f}" for s in scores)
    ece = f"test ECE {results['test']['ece']:.4f}"
    if calibrated:
        ece += f" (uncalibrated {results['test']['ece_uncalibrated']:.4f}, temperature {head.temperature:.4g})"
    elif "ece_calibrated" in results["test"]:
        ece += (f" ({results['test']['ece_calibrated']:.4f} with a temperature of "
                f"{results['temperature_on_val']:.4g} fitted on val, not applied)")
    print(f"evaluated {name} ({head.kind}): {said}, {ece} -> {out_dir}")
    return results


def run_config(params: Params, key: str) -> dict:
    """Evaluate the saved head of configuration ``key`` into the project's files (what the train stage does
    after fitting it)."""
    features = layout.FEATURES[params.head_config(key).params.input]
    return run(features, layout.head_file(key), layout.evaluation_dir(key), layout.head_name(key), layout.summary_file(key))


def main(argv: list[str] | None = None) -> int:
    """Evaluate a saved head again on its own (the train stage runs this after each fit)."""
    from pipeline.core.cli import head_parser, run_stage

    args = head_parser(__doc__).parse_args(argv)
    return run_stage(args, lambda params, a: run_config(params, a.config))


if __name__ == "__main__":
    sys.exit(main())
