"""Calibrated probabilities: the temperature fitted on the validation split of real cached features, what
evaluate reports, and predict and export giving the same calibrated probabilities."""

import csv
import json

import numpy as np
import pytest
import torch

from pipeline.core.config import parse_params
from pipeline.core.errors import ConfigError
from pipeline.core.head_registry import KINDS
from pipeline.heads.base import load_head, softmax
from pipeline.heads.calibration import TEMPERATURE_BOUNDS, mean_nll
from pipeline.heads.metrics import calibration
from pipeline.model import export, load_exported, load_trained, predict
from pipeline.stages import evaluate, extract, prepare, train
from pipeline.store.features import FeatureStore
from tests.conftest import write_cifar_folder


def with_calibration(params, key):
    """The params with ``calibrate: true`` for configuration ``key``."""
    raw = params.model_dump()
    section, _, name = key.partition(".")
    entry = raw[section][name] if name else raw["head"]
    entry[entry["kind"]] = {**(entry.get(entry["kind"]) or {}), "calibrate": True}
    return parse_params(raw)


def brute_force_temperature(scores, labels):
    """The temperature of least validation NLL on a grid of 6,001 values, 1e-3 decade apart, over the bounds."""
    grid = np.logspace(np.log10(TEMPERATURE_BOUNDS[0]), np.log10(TEMPERATURE_BOUNDS[1]), 6001)
    nll = np.array([mean_nll(scores, labels, t) for t in grid])
    return grid, nll


@pytest.mark.parametrize("kind", sorted(set(KINDS) - {"knn"}))
def test_the_temperature_is_the_brute_force_minimum_of_the_validation_nll(caches, kind, tmp_path):
    out, params = caches
    key = "finetune.top" if kind == "finetune" else f"heads.{kind}"
    features = out / ("cut.h5" if kind == "finetune" else "pooled.h5")
    fitted = train.run(with_calibration(params, key), features, out / "splits.json", tmp_path / "h.npz", key=key)
    head, _ = load_head(tmp_path / "h.npz")
    assert head.temperature == fitted["temperature"]
    with FeatureStore(features) as store:
        X, y = store.load("val")
    scores = head.decision_function(X)
    grid, nll = brute_force_temperature(scores, y)
    best = int(np.argmin(nll))
    assert mean_nll(scores, y, head.temperature) <= nll[best] + 1e-12
    assert abs(np.log10(head.temperature) - np.log10(grid[best])) <= 1e-3  # within one grid step
    assert fitted["val_nll"] == mean_nll(scores, y) >= fitted["val_nll_calibrated"]
    assert fitted["val_nll_calibrated"] == mean_nll(scores, y, head.temperature)


# -- an over-confident head on a larger real run ------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """5 CIFAR-10 classes (30 training, 10 validation, 30 test images each), ResNet-18 features (random init,
    64 px), and heads that are sure of themselves: logistic regression with a weak penalty (C = 10) and an
    MLP, both calibrated; a swept logistic head (fitted on train + val)."""
    out = tmp_path_factory.mktemp("calibration")
    folder = write_cifar_folder(out / "images", ["airplane", "automobile", "bird", "cat", "deer"],
                                {"train": 40, "test": 30})
    params = parse_params({
        "data": {"source": str(folder), "val_fraction": 0.25},
        "backbone": {"name": "resnet18", "weights": None, "input_size": 64, "batch_size": 32, "cut": None},
        "head": {"kind": "logistic", "logistic": {"C": 10.0, "calibrate": True}},
        "heads": {"mlp": {"kind": "mlp", "mlp": {"epochs": 30, "hidden": 64, "calibrate": True}},
                  "sweep": {"kind": "logistic",
                            "logistic": {"select": "sweep", "grid": {"low": 1e-3, "high": 1.0, "num": 4}}}},
        "finetune": {},
    })
    prepare.run(params, out / "splits.json")
    extract.run(params, out / "splits.json", out / "f.h5", progress=False)
    for key in ("head", "heads.mlp", "heads.sweep"):
        train.run(params, out / "f.h5", out / "splits.json", out / f"{key}.npz", key=key)
        evaluate.run(out / "f.h5", out / f"{key}.npz", out / f"eval-{key}", key)
    return out, folder, params


def test_calibration_lowers_the_ece_of_an_over_confident_head(run):
    out, _, _ = run
    head, _ = load_head(out / "head.npz")
    metrics = json.loads((out / "eval-head" / "metrics.json").read_text())
    with FeatureStore(out / "f.h5") as store:
        X, y = store.load("test")
    scores = head.decision_function(X)
    raw = softmax(scores)
    assert raw.max(axis=1).mean() > (raw.argmax(axis=1) == y).mean() + 0.2  # over-confident before
    assert head.temperature > 1 and metrics["chosen"]["temperature"] == head.temperature
    test = metrics["test"]
    assert test["ece_uncalibrated"] == pytest.approx(calibration(raw, y)["ece"], abs=1e-12)
    assert test["ece"] == pytest.approx(calibration(softmax(scores / head.temperature), y)["ece"], abs=1e-12)
    assert test["ece"] < test["ece_uncalibrated"] / 2
    # on the validation split, where the temperature was fitted, only the uncalibrated ECE is reported
    assert "ece" not in metrics["val"] and "ece_uncalibrated" in metrics["val"]
    # the predicted classes are those of the scores
    with open(out / "eval-head" / "test_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    classes = json.loads((out / "splits.json").read_text())["classes"]
    assert [r["predicted"] for r in rows] == [classes[c] for c in scores.argmax(axis=1)]


def confidences(path):
    with open(path, newline="") as f:
        return {r["id"]: (r["predicted"], float(r["confidence"])) for r in csv.DictReader(f)}


@pytest.mark.parametrize("key", ["head", "heads.mlp"])
def test_predict_and_export_give_evaluates_calibrated_probabilities(run, key, tmp_path):
    from pipeline.data.images import decode_image

    out, folder, _ = run
    evaluated = confidences(out / f"eval-{key}" / "test_predictions.csv")
    model = load_trained(out / "f.h5", out / f"{key}.npz")
    ids = list(evaluated)
    predicted = {r["path"]: r["top"][0] for r in predict(model, [folder / i for i in ids], top_k=1)}
    for i in ids:
        top = predicted[str(folder / i)]
        assert (top["class"], top["score"]) == (evaluated[i][0], pytest.approx(evaluated[i][1], abs=1e-5))
    # the temperature matters: the uncalibrated probabilities are other numbers
    with FeatureStore(out / "f.h5") as store:
        X, _ = store.load("test")
    uncalibrated = softmax(model.head.decision_function(X)).max(axis=1)
    assert np.abs(uncalibrated - np.array([evaluated[i][1] for i in ids])).max() > 0.05

    module, meta = load_exported(export(model, tmp_path / "model.pt2"))
    assert meta["temperature"] == model.head.temperature and "calibrated" in meta["output"]
    images = torch.stack([decode_image((folder / i).read_bytes(), model.backbone.preprocessing.geometry) for i in ids])
    with torch.inference_mode():
        exported = torch.softmax(module(images), dim=1).numpy()
    np.testing.assert_allclose(exported.max(axis=1), [evaluated[i][1] for i in ids], atol=1e-3)


def test_save_and_load_keep_the_temperature(run, tmp_path):
    out, _, _ = run
    head, meta = load_head(out / "head.npz")
    head.save(tmp_path / "again.npz", metadata=meta)
    again, _ = load_head(tmp_path / "again.npz")
    assert again.temperature == head.temperature > 1
    with FeatureStore(out / "f.h5") as store:
        X, _ = store.load("test")
    np.testing.assert_array_equal(again.predict_proba(X), head.predict_proba(X))
    np.testing.assert_array_equal(again.predict_proba(X), softmax(head.decision_function(X) / head.temperature))
    plain, _ = load_head(out / "heads.sweep.npz")  # calibrate: false
    assert plain.temperature is None
    np.testing.assert_array_equal(plain.predict_proba(X), softmax(plain.decision_function(X)))


# -- heads fitted on the validation split --------------------------------------------------------------
@pytest.mark.parametrize("kind", ["logistic", "linear"])
def test_a_swept_head_cannot_be_calibrated_and_the_message_names_the_configuration(kind):
    with pytest.raises(ConfigError, match=rf"params: heads.probe.{kind}: calibrate: true cannot be combined with "
                                          r"select: sweep: a swept head is refit on train \+ val"):
        parse_params({"heads": {"probe": {"kind": kind, kind: {"select": "sweep", "calibrate": True}}}})
    with pytest.raises(ConfigError, match=rf"params: curves.heads.x.{kind}.calibrate: must be false"):
        parse_params({"curves": {"heads": {"x": {"kind": kind, kind: {"calibrate": True}}}}})


def test_knn_cannot_be_calibrated_and_the_message_says_why():
    with pytest.raises(ConfigError, match=r"params: heads.k.knn: calibrate: true is refused for knn: .*vote shares"):
        parse_params({"heads": {"k": {"kind": "knn", "knn": {"calibrate": True}}}})


def test_a_head_fitted_on_the_validation_split_refuses_to_calibrate_on_it(run):
    out, _, _ = run
    swept, _ = load_head(out / "heads.sweep.npz")
    assert swept.fitted_on == ("train", "val")
    with FeatureStore(out / "f.h5") as store, pytest.raises(
            ConfigError, match=r"heads.sweep: cannot calibrate a head fitted on the validation split \(logistic fitted "
                               r"on train \+ val\)"):
        swept.calibrate(store, name="heads.sweep")
    assert swept.temperature is None


def test_calibrating_without_a_validation_split_stops_before_fitting(cifar_folder, tmp_path):
    params = parse_params({
        "data": {"source": str(cifar_folder), "val_fraction": 0.0},
        "backbone": {"name": "resnet18", "weights": None, "input_size": 32, "batch_size": 8, "cut": None},
        "head": {"kind": "ridge", "ridge": {"calibrate": True}},
        "finetune": {},
    })
    prepare.run(params, tmp_path / "splits.json")
    extract.run(params, tmp_path / "splits.json", tmp_path / "f.h5", progress=False)
    with pytest.raises(ConfigError, match=r"^head: calibrate: true needs a validation split: set data.val_fraction"):
        train.run(params, tmp_path / "f.h5", tmp_path / "splits.json", tmp_path / "h.npz")
    assert not (tmp_path / "h.npz").exists()


def test_softmax_and_logsumexp_are_scipys_and_a_never_seen_class_gets_probability_zero():
    import scipy.special

    from pipeline.heads.calibration import logsumexp

    rng = np.random.default_rng(0)
    scores = rng.normal(scale=30, size=(50, 7)).astype(np.float32)  # large enough to overflow a plain exp
    scores[:, 3] = -np.inf
    p = softmax(scores)
    assert p.dtype == np.float32 and (p[:, 3] == 0).all()
    np.testing.assert_allclose(p, scipy.special.softmax(scores, axis=1), rtol=1e-6, atol=1e-30)
    wide = scores.astype(np.float64)
    np.testing.assert_allclose(logsumexp(wide), scipy.special.logsumexp(wide, axis=1), rtol=1e-12)
