"""The pipeline's stages as functions: prepare -> extract -> train -> evaluate.

Each takes the validated :class:`~pipeline.config.Params` and explicit paths (the ones dvc.yaml
lists), so tests call them directly and the CLI is a thin layer over them. The head side
(train, evaluate) reads only the feature store and never imports the backbone code.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np

from pipeline.config import Params
from pipeline.fileutil import atomic_path, write_json


def prepare(params: Params, splits_path: str | Path) -> dict:
    from pipeline.data import make_splits, open_source

    d = params.data
    splits = make_splits(open_source(d.source), d.val_fraction, d.subset_per_class, params.seed)
    splits.save(splits_path)
    counts = {n: len(s) for n, s in splits.splits.items()}
    print(f"prepared {d.source}: {len(splits.classes)} classes, {counts}")
    return counts


def extract(params: Params, splits_path: str | Path, features_path: str | Path, progress: bool = True) -> Path:
    from pipeline.backbones import load_backbone
    from pipeline.data import Splits, open_source
    from pipeline.extract import extract_features, feature_spec, tune_allocator

    tune_allocator()
    b = params.backbone
    splits = Splits.load(splits_path)
    backbone = load_backbone(b.name, b.weights, b.input_size, seed=params.seed)
    spec = feature_spec(splits, backbone, b.weights, b.input_size, b.storage_dtype)
    start = time.perf_counter()
    out = extract_features(
        splits, open_source(splits.source), backbone, spec, features_path,
        batch_size=b.batch_size, num_workers=b.num_workers, skip_bad=b.on_bad_image == "skip",
        chunk_rows=b.chunk_rows, progress=progress,
    )
    n = sum(len(s) for s in splits.splits.values())
    print(f"extracted {n} images with {b.name} in {time.perf_counter() - start:.1f} s -> {out}")
    return out


def expected_spec(params: Params, splits_path: str | Path) -> dict:
    """The FeatureSpec fields the current params and prepared data require of a feature file."""
    b = params.backbone
    return {
        "backbone": b.name,
        "weights": "none" if b.weights is None else b.weights,
        "input_size": b.input_size,
        "storage_dtype": b.storage_dtype,
        "dataset_fingerprint": json.loads(Path(splits_path).read_text())["fingerprint"],
    }


def _feature_identity(store) -> dict:
    s = store.spec
    return {"backbone": s.backbone, "weights_id": s.weights_id, "preprocessing": s.preprocessing,
            "dataset_fingerprint": s.dataset_fingerprint, "classes": list(s.classes), "feature_dim": s.feature_dim}


def train(params: Params, features_path: str | Path, splits_path: str | Path, head_path: str | Path) -> dict:
    from pipeline.features import FeatureStore
    from pipeline.heads import HEADS

    kind = params.head.kind
    with FeatureStore(features_path) as store:
        store.check(expected_spec(params, splits_path))
        X, y = store.load("train")
        identity = _feature_identity(store)
    head = HEADS[kind](params.head.params_of(kind), seed=params.seed)
    start = time.perf_counter()
    head.fit(X, y, n_classes=len(identity["classes"]))
    fit_seconds = time.perf_counter() - start
    head.save(head_path, metadata={"features": identity, "fit_seconds": fit_seconds, "n_train": len(y)})
    print(f"trained head {kind} on {len(y)} x {X.shape[1]} features in {fit_seconds:.1f} s -> {head_path}")
    return {"fit_seconds": fit_seconds}


def evaluate(features_path: str | Path, head_path: str | Path, out_dir: str | Path) -> dict:
    from pipeline.errors import FeatureStoreError
    from pipeline.features import FeatureStore
    from pipeline.heads import load_head
    from pipeline.metrics import classification_metrics, plot_confusion

    out_dir = Path(out_dir)
    head, meta = load_head(head_path)
    results: dict = {"head": head.kind}
    with FeatureStore(features_path) as store:
        if meta.get("features") != _feature_identity(store):
            raise FeatureStoreError(
                f"head {head_path} was trained on other features than {features_path}; re-run the train stage"
            )
        classes = list(store.spec.classes)
        for split in ("val", "test"):
            X, y = store.load(split)
            if not len(y):
                continue
            scores = head.decision_function(X)
            metrics = classification_metrics(scores, y, classes)
            confusion = np.array(metrics.pop("confusion_matrix"))
            results[split] = metrics
    results["fit_seconds"] = round(meta.get("fit_seconds", float("nan")), 3)
    write_json(out_dir / "metrics.json", results)
    # the last split evaluated is test: its confusion matrix and predictions become plots
    write_json(out_dir / "confusion.json", {"classes": classes, "matrix": confusion.tolist()})
    with atomic_path(out_dir / "test_predictions.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["actual", "predicted"])
        writer.writerows((classes[a], classes[p]) for a, p in zip(y, scores.argmax(axis=1)))
    test = results["test"]
    plot_confusion(confusion, classes, out_dir / "confusion.png", f"{head.kind} head, test top-1 {test['top1']:.3f}")
    summary = ", ".join(f"{s} top-1 {results[s]['top1']:.4f}" for s in ("val", "test") if s in results)
    print(f"evaluated head {head.kind}: {summary} -> {out_dir}")
    return results
