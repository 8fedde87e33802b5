"""The heads: one conformance suite over every registered kind, then what is particular to each."""

import json

import numpy as np
import pytest

from pipeline.core.config import parse_params, read_yaml
from pipeline.core.errors import ConfigError, FeatureStoreError, PipelineError
from pipeline.core.head_params import KnnParams, LinearParams, LogisticParams, RidgeParams
from pipeline.core.head_registry import KINDS, head_class, kinds
from pipeline.heads.base import load_head
from pipeline.stages import evaluate, train
from pipeline.store.features import FeatureStore
from tests.conftest import ROOT


def blobs(n_per_class=60, dim=16, n_classes=4, seed=0, spread=1.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (n_classes, dim))
    X = np.concatenate([c + spread * rng.normal(size=(n_per_class, dim)) for c in centres]).astype(np.float32)
    y = np.repeat(np.arange(n_classes), n_per_class)
    return X * 5 + 10, y  # offset and scale, so normalisation matters


# -- conformance: every registered kind, trained by the train stage on real cached features ---------
def config_key(kind: str) -> str:
    return "finetune.top" if kind == "finetune" else f"heads.{kind}"


@pytest.fixture(scope="module", params=sorted(KINDS))
def trained(request, caches):
    kind = request.param
    out, params = caches
    features = out / ("cut.h5" if kind == "finetune" else "pooled.h5")
    train.run(params, features, out / "splits.json", out / f"{kind}.npz", key=config_key(kind))
    return kind, out / f"{kind}.npz", features, params


def test_head_scores_have_the_shape_and_meaning_of_scores(trained):
    kind, head_path, features, _ = trained
    head, meta = load_head(head_path)
    assert head.kind == kind and meta["n_train"] == 18  # 3 classes x 6 training images
    with FeatureStore(features) as store:
        X, y = store.load("test")
    scores = head.decision_function(X)
    assert scores.shape == (len(y), 3) and scores.dtype in (np.float32, np.float64) and np.isfinite(scores).all()
    proba = head.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    assert (proba >= 0).all()
    np.testing.assert_array_equal(head.predict(X), scores.argmax(axis=1))


def test_saved_and_loaded_head_gives_identical_scores(trained, tmp_path):
    kind, head_path, features, _ = trained
    head, meta = load_head(head_path)
    head.save(tmp_path / "again.npz", metadata=meta)
    again, meta_again = load_head(tmp_path / "again.npz")
    assert meta_again == meta and again.fitted == head.fitted and again.params == head.params
    with FeatureStore(features) as store:
        X, _ = store.load("test")
    np.testing.assert_array_equal(again.decision_function(X), head.decision_function(X))


def test_export_gives_the_head_scores_or_a_clear_refusal(trained):
    import torch

    kind, head_path, features, _ = trained
    head, _ = load_head(head_path)
    with FeatureStore(features) as store:
        X, _ = store.load("test")
    if kind == "knn":
        with pytest.raises(PipelineError, match="knn head cannot be exported.*predict"):
            head.to_torch()
        return
    module = head.to_torch()
    with torch.inference_mode():
        exported = module(torch.as_tensor(X)).numpy()
    np.testing.assert_allclose(exported, head.decision_function(X), atol=1e-4, rtol=1e-4)


def test_a_head_refuses_features_from_another_file(trained, caches, tmp_path):
    kind, head_path, _, _ = trained
    out, _ = caches
    other = out / ("other.h5" if kind != "finetune" else "pooled.h5")
    with pytest.raises(FeatureStoreError, match="trained on other features"):
        evaluate.run(other, head_path, tmp_path / "eval")


def test_training_is_reproducible_from_the_seed(trained, tmp_path):
    kind, head_path, features, params = trained
    train.run(params, features, features.parent / "splits.json", tmp_path / "again.npz", key=config_key(kind))
    first, _ = load_head(head_path)
    again, _ = load_head(tmp_path / "again.npz")
    with FeatureStore(features) as store:
        X, _ = store.load("test")
    np.testing.assert_array_equal(again.decision_function(X), first.decision_function(X))


def test_a_pooled_head_refuses_the_cut_cache(caches, tmp_path):
    out, params = caches
    with pytest.raises(FeatureStoreError, match="holds the cut cache.*trains on pooled features"):
        train.run(params, out / "cut.h5", out / "splits.json", tmp_path / "x.npz", key="heads.ridge")


# -- what each kind computes --------------------------------------------------------------------
def test_logistic_head_is_scikit_learn_logistic_regression():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    X, y = blobs(spread=3.0)
    head = head_class("logistic")(LogisticParams(C=0.1, tol=1e-4)).fit(X, y)
    scaler = StandardScaler().fit(X)
    reference = LogisticRegression(C=0.1, max_iter=1000).fit(scaler.transform(X), y)
    np.testing.assert_allclose(head.predict_proba(X), reference.predict_proba(scaler.transform(X)), atol=1e-4)


def test_linear_head_minimises_the_same_objective_as_logistic_regression():
    """mean CE + wd/2 ||W||^2 equals scikit-learn's objective with C = 1 / (N * wd), up to a factor."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    X, y = blobs(spread=3.0)
    wd = 1e-2
    head = head_class("linear")(LinearParams(weight_decay=wd, max_iter=500)).fit(X, y)
    Xs = StandardScaler().fit_transform(X)
    reference = LogisticRegression(C=1 / (len(y) * wd), max_iter=5000, tol=1e-10).fit(Xs, y)
    np.testing.assert_allclose(head.predict_proba(X), reference.predict_proba(Xs), atol=2e-3)


def test_ridge_head_is_least_squares_on_one_hot_targets():
    """The head against the normal equations of ||X W + b - Y||^2 + alpha ||W||^2 (b not penalised),
    written out here: [X 1]^T [X 1] + diag(alpha, ..., alpha, 0)."""
    X, y = blobs(spread=3.0)
    head = head_class("ridge")(RidgeParams(alpha=5.0, normalize="none")).fit(X, y)
    A = np.hstack([X.astype(np.float64), np.ones((len(y), 1))])
    penalty = np.diag([5.0] * X.shape[1] + [0.0])
    Wb = np.linalg.solve(A.T @ A + penalty, A.T @ np.eye(4)[y])
    np.testing.assert_allclose(head.decision_function(X), A @ Wb, atol=1e-3)


def test_the_seed_changes_what_a_stochastic_head_learns():
    X, y = blobs(spread=3.0)
    params = head_class("mlp").Params(epochs=2, hidden=16)
    a = head_class("mlp")(params, seed=3).fit(X, y).decision_function(X)
    b = head_class("mlp")(params, seed=4).fit(X, y).decision_function(X)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"head": {"kind": "svm"}}, r"head.kind: 'svm' is not a known head; valid choices: \['knn', 'linear', 'logistic', 'mlp', 'nearest_centroid', 'ridge'\]"),
        ({"head": {"kind": "finetune"}}, r"head.kind: 'finetune' trains on the cut cache.*configure it under finetune:"),
        ({"head": {"logistic": {"C": -1.0}}}, r"head.logistic.C: Input should be greater than 0 \(got -1.0\)"),
        ({"head": {"logistic": {"C": "big"}}}, r"head.logistic.C: Input should be a valid number"),
        ({"head": {"ridge": {"alpah": 1.0}}}, r"head.ridge.alpah: Extra inputs are not permitted"),
        ({"head": {"linear": {"normalize": "zscore"}}}, r"head.linear.normalize: Input should be 'none', 'standardize' or 'l2'"),
        ({"heads": {"a": {"kind": "knn", "knn": {"k": 0}}}}, r"heads.a.knn.k: Input should be greater than 0"),
        ({"finetune": {"top": {"finetune": {"epochs": 0}}}, "backbone": {"cut": "layer4"}}, r"finetune.top.finetune.epochs: Input should be greater than 0"),
        ({"backbone": {"input_size": "224"}}, r"backbone.input_size: Input should be a valid integer"),
        ({"backbone": {"storage_dtype": "int8"}}, r"backbone.storage_dtype: Input should be 'float32' or 'float16'"),
        ({"data": {"val_fraction": 1.5}}, r"data.val_fraction: Input should be less than 1"),
        ({"seed": -1}, r"seed: Input should be greater than or equal to 0 \(got -1\)"),
        ({"seed": 2**64}, r"seed: Input should be less than 4294967296"),
        ({"dataa": {}}, r"dataa: Extra inputs are not permitted"),
    ],
)
def test_bad_params_name_the_key_and_the_valid_values(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_params(raw)


def test_params_yaml_shows_each_head_kind_with_its_defaults():
    """The defaults live in pipeline/core/head_params.py; params.yaml may show them, and must show the same values."""
    raw = read_yaml(ROOT / "params.yaml")
    sections = {**{f"head.{k}": v for k, v in raw["head"].items() if k != "kind"},
                **{f"finetune.{name}.finetune": entry["finetune"] for name, entry in raw["finetune"].items()}}
    for key, shown in sections.items():
        defaults = KINDS[key.rpartition(".")[2]].params().model_dump()
        differing = {k: (v, defaults.get(k)) for k, v in shown.items() if defaults.get(k) != v}
        assert not differing, f"params.yaml {key}: shown value != default in pipeline/core/head_params.py: {differing}"
    assert set(raw["head"]) - {"kind"} == set(kinds("pooled"))


def correlated(n_per_class, sample_seed, dim=30, n_classes=3, separation=0.5):
    """Classes that differ little, seen through an ill-conditioned mixing: the L2 penalty matters,
    and the best one lies inside the grid."""
    rng = np.random.default_rng(0)
    means = rng.normal(0, separation, (n_classes, dim))
    mixing = rng.normal(size=(dim, dim)) * np.logspace(0, 2, dim)
    samples = np.random.default_rng(sample_seed)
    Z = np.concatenate([m + samples.normal(size=(n_per_class, dim)) for m in means])
    return (Z @ mixing).astype(np.float32), np.repeat(np.arange(n_classes), n_per_class)


def test_sweep_chooses_the_brute_force_best_penalty_then_refits_on_train_and_val():
    """The warm-started torch path must pick the penalty that fitting scikit-learn at every value picks."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    X, y = correlated(30, sample_seed=1)
    Xv, yv = correlated(200, sample_seed=2)
    params = LogisticParams(select="sweep", grid={"low": 1e-4, "high": 10.0, "num": 6}, sweep_max_iter=500, tol=1e-4)
    head = head_class("logistic")(params).fit(X, y, validation=(Xv, yv))

    grid = np.logspace(-4, 1, 6)
    scaler = StandardScaler().fit(X)
    brute = []
    for l2 in grid:
        model = LogisticRegression(C=1 / (l2 * len(y)), max_iter=10000, tol=1e-8).fit(scaler.transform(X), y)
        brute.append((model.predict(scaler.transform(Xv)) == yv).mean())
    one_sample = 1 / len(yv)
    assert max(brute) - min(brute) > 10 * one_sample  # the problem discriminates between penalties
    assert 0 < int(np.argmax(brute)) < len(grid) - 1  # ... and its best penalty is inside the grid
    np.testing.assert_allclose(head.fitted.sweep["val_top1"][::-1], brute, atol=2.5 * one_sample)  # swept high to low
    chosen = head.fitted.chosen_l2
    assert brute[int(np.argmin(np.abs(np.log(grid / chosen))))] >= max(brute) - 2.5 * one_sample

    # refit on train + val at the chosen penalty, with C = 1 / (l2 * N_train+val)
    X_all, y_all = np.concatenate([X, Xv]), np.concatenate([y, yv])
    assert head.fitted.C == pytest.approx(1 / (chosen * len(y_all)))
    scaler_all = StandardScaler().fit(X_all)
    reference = LogisticRegression(C=head.fitted.C, max_iter=10000).fit(scaler_all.transform(X_all), y_all)
    np.testing.assert_allclose(head.predict_proba(Xv), reference.predict_proba(scaler_all.transform(Xv)), atol=1e-3)


def test_linear_sweep_records_the_choice():
    X, y = blobs(n_per_class=25, dim=40, spread=6.0, seed=1)
    Xv, yv = blobs(n_per_class=50, dim=40, spread=6.0, seed=1)
    params = LinearParams(select="sweep", grid={"low": 1e-3, "high": 1.0, "num": 4})
    head = head_class("linear")(params).fit(X, y, validation=(Xv, yv))
    assert head.fitted.chosen_l2 in head.fitted.sweep["l2"]
    assert head.fitted.chosen_val_top1 == max(head.fitted.sweep["val_top1"])
    # the final head is a fixed-penalty fit at the chosen value on train + val
    fixed = head_class("linear")(LinearParams(weight_decay=head.fitted.chosen_l2)).fit(np.concatenate([X, Xv]), np.concatenate([y, yv]))
    np.testing.assert_allclose(head.decision_function(Xv), fixed.decision_function(Xv), atol=1e-4)
    with pytest.raises(ValueError, match="needs a validation split"):
        head_class("linear")(params).fit(X, y)


def test_knn_probabilities_stay_finite_on_unnormalised_features():
    X, y = blobs()
    head = head_class("knn")(KnnParams(normalize="standardize")).fit(X, y)
    proba = head.predict_proba(X)
    assert np.isfinite(proba).all() and (head.predict(X) == y).mean() > 0.9


def test_two_class_sweep_refits_scikit_learn_at_the_matching_penalty():
    """For two classes scikit-learn fits one vector w; the softmax penalty l2 matches C = 2 / (l2 N)."""
    X, y = correlated(40, sample_seed=1, n_classes=2)
    Xv, yv = correlated(100, sample_seed=2, n_classes=2)
    params = LogisticParams(select="sweep", grid={"low": 1e-3, "high": 1.0, "num": 4}, tol=1e-4)
    head = head_class("logistic")(params).fit(X, y, validation=(Xv, yv))
    assert head.fitted.C == pytest.approx(2 / (head.fitted.chosen_l2 * (len(y) + len(yv))))
    linear = head_class("linear")(LinearParams(weight_decay=head.fitted.chosen_l2, max_iter=1000))
    linear.fit(np.concatenate([X, Xv]), np.concatenate([y, yv]))
    np.testing.assert_allclose(head.predict_proba(Xv), linear.predict_proba(Xv), atol=2e-3)


def test_yaml_exponent_floats_are_numbers(tmp_path):
    from pipeline.core.config import load_params

    (tmp_path / "params.yaml").write_text("head:\n  logistic: {C: 1e-3}\n  ridge: {alpha: 2E+1}\n")
    params = load_params(tmp_path / "params.yaml")
    assert params.head.params_of("logistic", "head").C == 0.001 and params.head.params_of("ridge", "head").alpha == 20.0


# -- training curves (DVCLive) -------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["mlp", "finetune"])
def test_training_curves_are_logged_without_changing_what_is_learned(caches, kind, tmp_path):
    """A head that trains for epochs logs train loss and validation top-1 per epoch with DVCLive; the
    seeded head is bit-identical with and without the log, and the last logged validation top-1 is the
    saved head's."""
    out, params = caches
    features, key = out / ("cut.h5" if kind == "finetune" else "pooled.h5"), config_key(kind)
    train.run(params, features, out / "splits.json", tmp_path / "plain.npz", key=key)
    train.run(params, features, out / "splits.json", tmp_path / "logged.npz", key=key, live_dir=tmp_path / "live")
    plain, _ = load_head(tmp_path / "plain.npz")
    logged, _ = load_head(tmp_path / "logged.npz")
    with FeatureStore(features) as store:
        X, _ = store.load("test")
        X_val, y_val = store.load("val", dtype=store.spec.storage_dtype)
    np.testing.assert_array_equal(logged.decision_function(X), plain.decision_function(X))
    epochs = logged.params.epochs
    summary = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert summary["step"] == epochs - 1 and set(summary) == {"train", "val", "step"}
    assert summary["val"]["top1"] == float((logged.predict(X_val) == y_val).mean())
    for name in ("train/loss", "val/top1"):
        lines = (tmp_path / "live" / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines()
        assert lines[0] == f"step\t{name.split('/')[1]}" and len(lines) == 1 + epochs, name
    assert not (tmp_path / "live" / "plots" / "metrics" / "train" / "seconds.tsv").exists()  # metrics.json only
    assert not (tmp_path / "live" / "dvc.yaml").exists() and not (ROOT / "dvclive").exists()


def test_a_head_fitted_in_one_go_logs_one_step_and_no_plot(caches, tmp_path):
    out, params = caches
    train.run(params, out / "pooled.h5", out / "splits.json", tmp_path / "ridge.npz", key="heads.ridge",
              live_dir=tmp_path / "live")
    summary = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert summary["step"] == 0 and set(summary["train"]) == {"seconds"}
    # a plot of one point says nothing; the one file, a table with no row, keeps the folder (a DVC output) in git
    assert [p.name for p in (tmp_path / "live" / "plots" / "metrics").rglob("*")] == ["no_epochs.tsv"]
    assert (tmp_path / "live" / "plots" / "metrics" / "no_epochs.tsv").read_text() == "step\n"
