"""The pipeline's stages as functions: prepare -> extract -> train -> evaluate.

Each takes the validated :class:`~pipeline.config.Params` and explicit paths (the ones dvc.yaml
lists), so tests call them directly and the CLI is a thin layer over them. The head side
(train, evaluate) reads only the feature store; it imports the backbone code only for the finetune
head, which trains the backbone's own layers above the cut.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np

from pipeline.config import Params
from pipeline.errors import ConfigError
from pipeline.features import fits_in_memory
from pipeline.fileutil import atomic_path, write_json


def prepare(params: Params, splits_path: str | Path) -> dict:
    from pipeline.data import make_splits, open_source

    d = params.data
    splits = make_splits(open_source(d.source), d.val_fraction, d.subset_per_class, params.seed)
    splits.save(splits_path)
    counts = {n: len(s) for n, s in splits.splits.items()}
    print(f"prepared {d.source}: {len(splits.classes)} classes, {counts}")
    return counts


def extract(params: Params, splits_path: str | Path, features_path: str | Path, progress: bool = True,
            cut: bool = False) -> Path | None:
    """Run the frozen backbone over every image; with ``cut``, only its part below ``backbone.cut``
    (the cut cache). Under torchrun, each process extracts its own shard and rank 0 writes the file
    (the other ranks return None)."""
    from pipeline.backbones import load_backbone
    from pipeline.data import Splits, open_source
    from pipeline.extract import distributed, extract_features, feature_spec, tune_allocator

    tune_allocator()
    b = params.backbone
    splits = Splits.load(splits_path)
    backbone = load_backbone(b.name, b.weights, b.input_size, seed=params.seed)
    dtype = b.storage_dtype
    if cut and b.cut is None:  # no fine-tuning configured: the stage's output is a placeholder
        import h5py

        with atomic_path(features_path) as tmp, h5py.File(tmp, "w") as h5:
            h5.attrs["placeholder"] = "backbone.cut is null: no cut cache"
        print(f"backbone.cut is null: no cut cache computed (placeholder {features_path}); "
              f"cut points of {b.name}: {backbone.cut_points()}")
        return None
    if cut:
        backbone, _ = backbone.cut_at(b.cut)
        dtype = b.cut_storage_dtype
        check_cut_size(backbone, sum(len(s) for s in splits.splits.values()), dtype, b.cut_max_gib, Path(features_path))
    spec = feature_spec(splits, backbone, b.weights, b.input_size, dtype)
    start = time.perf_counter()
    with distributed() as (shard, device):
        out = extract_features(
            splits, open_source(splits.source), backbone, spec, features_path,
            batch_size=b.batch_size, num_workers=b.num_workers, skip_bad=b.on_bad_image == "skip",
            chunk_rows=b.chunk_rows, progress=progress, shard=shard, device=device, compile=b.compile,
        )
    if out is not None:
        n = sum(len(s) for s in splits.splits.values())
        procs = f" by {shard.world_size} processes" if shard.world_size > 1 else ""
        what = f"{b.name} up to {b.cut}" if cut else b.name
        print(f"extracted {n} images with {what}{procs} in {time.perf_counter() - start:.1f} s -> {out}")
    return out


def check_cut_size(bottom, n_images: int, dtype: str, max_gib: float, out_path: Path) -> None:
    """State the cut cache's size before computing it; refuse one above ``max_gib`` or the free disk."""
    import shutil

    shape = "x".join(map(str, bottom.feature_shape))
    gib = n_images * bottom.feature_dim * np.dtype(dtype).itemsize / 2**30
    print(f"cut cache at the input of {bottom.cut}: {n_images} images x {shape} {dtype} = {gib:.2f} GiB")
    if gib > max_gib:
        raise ConfigError(
            f"the cut cache would take {gib:.1f} GiB, above backbone.cut_max_gib = {max_gib}: cut later in the "
            "network, store float16 (backbone.cut_storage_dtype), use fewer images (data.subset_per_class), "
            "or raise backbone.cut_max_gib"
        )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out_path.parent).free / 2**30
    if 2 * gib > free:  # the chunk files and the assembled file exist side by side for a moment
        raise ConfigError(f"the cut cache needs about {2 * gib:.1f} GiB of disk while it is assembled; "
                          f"{out_path.parent} has {free:.1f} GiB free")


def expected_spec(params: Params, splits_path: str | Path, cut: bool = False) -> dict:
    """The FeatureSpec fields the current params and prepared data require of a feature file
    (``cut``: of the cut cache)."""
    b = params.backbone
    return {
        "backbone": b.name,
        "weights": "none" if b.weights is None else b.weights,
        "input_size": b.input_size,
        "storage_dtype": b.cut_storage_dtype if cut else b.storage_dtype,
        "cut": (b.cut or "") if cut else "",
        "dataset_fingerprint": json.loads(Path(splits_path).read_text())["fingerprint"],
    }


def train(params: Params, features_path: str | Path, splits_path: str | Path, head_path: str | Path,
          head_key: str = "head") -> dict:
    """Fit the head configured at ``head_key`` (``head``, ``heads.<name>`` or ``finetune.<name>``, the
    last on the cut cache) on the cached features."""
    from pipeline.features import FeatureStore
    from pipeline.heads import FINETUNE, HEADS

    config = params.head_config(head_key)
    head = HEADS[config.kind](config.params_of(where=head_key), seed=params.seed)
    with FeatureStore(features_path) as store:
        store.check(expected_spec(params, splits_path, cut=config.kind == FINETUNE))
        identity, n_classes, n_train = store.identity(), len(store.spec.classes), store.n_rows("train")
        start = time.perf_counter()
        if config.kind == FINETUNE:
            head.fit_store(store)
        elif hasattr(head, "fit_chunks") and not head.needs_validation and not fits_in_memory(store.nbytes("train")):
            print(f"train features ({store.nbytes('train') / 2**30:.1f} GiB as float32) exceed the memory budget: "
                  "streaming them in blocks")
            head.fit_chunks(lambda: store.iter_chunks("train"), n_classes)
        else:
            X, y = store.load("train")
            validation = store.load("val") if head.needs_validation else None
            head.fit(X, y, n_classes=n_classes, validation=validation)
        fit_seconds = time.perf_counter() - start
    head.save(head_path, metadata={"features": identity, "fit_seconds": fit_seconds, "n_train": n_train})
    shape = "x".join(map(str, identity["feature_shape"]))
    print(f"trained head {config.kind} ({head_key}) on {n_train} x {shape} features in "
          f"{fit_seconds:.1f} s {head.chosen or ''} -> {head_path}")
    return {"fit_seconds": fit_seconds, **head.chosen}


def evaluate(features_path: str | Path, head_path: str | Path, out_dir: str | Path, name: str = "head") -> dict:
    """Metrics of a trained head on val and test, and the test plots (confusion, reliability)."""
    from pipeline.features import FeatureStore
    from pipeline.heads import load_head, softmax
    from pipeline.metrics import calibration, classification_metrics, plot_confusion, plot_reliability

    out_dir = Path(out_dir)
    head, meta = load_head(head_path)
    scores = {}
    with FeatureStore(features_path) as store:
        store.check_head(meta, head_path)
        classes = list(store.spec.classes)
        for split in ("val", "test"):
            blocks = [(head.decision_function(X), y) for X, y in store.iter_chunks(split)]
            if blocks:
                scores[split] = (np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks]))
    results: dict = {"name": name, "head": head.kind}
    confusion, reliability = {}, {}
    for split, (split_scores, y) in scores.items():
        results[split] = classification_metrics(split_scores, y, classes)
        confusion[split] = np.array(results[split].pop("confusion_matrix"))
        reliability[split] = calibration(softmax(split_scores), y)
        results[split]["ece"] = reliability[split]["ece"]
    results["fit_seconds"] = round(meta.get("fit_seconds", float("nan")), 3)
    results["chosen"] = head.chosen
    write_json(out_dir / "metrics.json", results)
    write_json(out_dir / "confusion.json", {"classes": classes, "matrix": confusion["test"].tolist()})
    if "sweep" in head.info:
        write_json(out_dir / "sweep.json", [
            {"l2": l2, "val_top1": acc} for l2, acc in zip(head.info["sweep"]["l2"], head.info["sweep"]["val_top1"])
        ])
    test_scores, test_labels = scores["test"]
    with atomic_path(out_dir / "test_predictions.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["actual", "predicted"])
        writer.writerows((classes[a], classes[p]) for a, p in zip(test_labels, test_scores.argmax(axis=1)))
    title = f"{name} ({head.kind}), test top-1 {results['test']['top1']:.3f}"
    plot_confusion(confusion["test"], classes, out_dir / "confusion.png", title)
    plot_reliability(reliability["test"], out_dir / "reliability.png", title)
    summary = ", ".join(f"{s} top-1 {results[s]['top1']:.4f}" for s in scores)
    print(f"evaluated {name} ({head.kind}): {summary}, test ECE {results['test']['ece']:.4f} -> {out_dir}")
    return results


def compare(metrics_paths: list[str | Path], out_dir: str | Path) -> list[dict]:
    """One table (Markdown) and one chart (PNG) of every evaluated head, best test top-1 first."""
    from pipeline.metrics import comparison_table, plot_comparison

    rows = sorted((json.loads(Path(p).read_text()) for p in metrics_paths), key=lambda r: -r["test"]["top1"])
    out_dir = Path(out_dir)
    table = comparison_table(rows)
    with atomic_path(out_dir / "comparison.md") as tmp:
        tmp.write_text(table)
    plot_comparison(rows, out_dir / "comparison.png")
    print(table)
    return rows
