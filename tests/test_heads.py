import numpy as np
import pytest

from pipeline.config import parse_params
from pipeline.errors import ConfigError
from pipeline.heads import HEADS, load_head, pooled_heads


def blobs(n_per_class=60, dim=16, n_classes=4, seed=0, spread=1.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (n_classes, dim))
    X = np.concatenate([c + spread * rng.normal(size=(n_per_class, dim)) for c in centres]).astype(np.float32)
    y = np.repeat(np.arange(n_classes), n_per_class)
    return X * 5 + 10, y  # offset and scale, so normalisation matters


@pytest.mark.parametrize("kind", pooled_heads())  # finetune: tests/test_finetune.py
def test_each_head_fits_predicts_saves_and_loads(kind, tmp_path):
    X, y = blobs()
    Xt, yt = blobs(seed=0, n_per_class=30)  # same centres, new noise
    head = HEADS[kind](seed=0).fit(X, y)
    assert (head.predict(Xt) == yt).mean() > 0.9
    proba = head.predict_proba(Xt)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    head.save(tmp_path / "head.npz", metadata={"note": "x"})
    loaded, meta = load_head(tmp_path / "head.npz")
    assert meta == {"note": "x"} and loaded.kind == kind and loaded.params == head.params
    np.testing.assert_array_equal(loaded.decision_function(Xt), head.decision_function(Xt))


def test_logistic_head_is_scikit_learn_logistic_regression():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    X, y = blobs(spread=3.0)
    head = HEADS["logistic"](HEADS["logistic"].Params(C=0.1)).fit(X, y)
    scaler = StandardScaler().fit(X)
    reference = LogisticRegression(C=0.1, max_iter=1000).fit(scaler.transform(X), y)
    np.testing.assert_allclose(head.predict_proba(X), reference.predict_proba(scaler.transform(X)), atol=1e-4)


def test_linear_head_minimises_the_same_objective_as_logistic_regression():
    """mean CE + wd/2 ||W||^2 equals scikit-learn's objective with C = 1 / (N * wd), up to a factor."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    X, y = blobs(spread=3.0)
    wd = 1e-2
    head = HEADS["linear"](HEADS["linear"].Params(weight_decay=wd, max_iter=500)).fit(X, y)
    Xs = StandardScaler().fit_transform(X)
    reference = LogisticRegression(C=1 / (len(y) * wd), max_iter=5000, tol=1e-10).fit(Xs, y)
    np.testing.assert_allclose(head.predict_proba(X), reference.predict_proba(Xs), atol=2e-3)


def test_ridge_head_is_least_squares_on_one_hot_targets():
    from sklearn.linear_model import Ridge

    X, y = blobs(spread=3.0)
    head = HEADS["ridge"](HEADS["ridge"].Params(alpha=5.0, normalize="none")).fit(X, y)
    reference = Ridge(alpha=5.0).fit(X.astype(np.float64), np.eye(4)[y])
    np.testing.assert_allclose(head.decision_function(X), reference.predict(X), atol=1e-3)


def test_heads_are_reproducible_from_the_seed():
    X, y = blobs(spread=3.0)
    for kind in pooled_heads():
        a = HEADS[kind](seed=3).fit(X, y).decision_function(X)
        b = HEADS[kind](seed=3).fit(X, y).decision_function(X)
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"head": {"kind": "svm"}}, r"head.kind: 'svm' is not a known head; valid choices: \['knn', 'linear', 'logistic', 'mlp', 'nearest_centroid', 'ridge'\]"),
        ({"head": {"logistic": {"C": -1.0}}}, r"head.logistic.C: Input should be greater than 0 \(got -1.0\)"),
        ({"head": {"logistic": {"C": "big"}}}, r"head.logistic.C: Input should be a valid number"),
        ({"head": {"ridge": {"alpah": 1.0}}}, r"head.ridge.alpah: Extra inputs are not permitted"),
        ({"head": {"linear": {"normalize": "zscore"}}}, r"head.linear.normalize: Input should be 'none', 'standardize' or 'l2'"),
        ({"backbone": {"input_size": "224"}}, r"backbone.input_size: Input should be a valid integer"),
        ({"backbone": {"storage_dtype": "int8"}}, r"backbone.storage_dtype: Input should be 'float32' or 'float16'"),
        ({"data": {"val_fraction": 1.5}}, r"data.val_fraction: Input should be less than 1"),
        ({"dataa": {}}, r"dataa: Extra inputs are not permitted"),
    ],
)
def test_bad_params_name_the_key_and_the_valid_values(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_params(raw)


def test_shipped_params_are_valid():
    from pipeline.config import load_params
    from tests.conftest import ROOT

    params = load_params(ROOT / "params.yaml")
    assert params.backbone.name == "efficientnet_lite0"
    assert params.head.params_of().model_dump()["normalize"] == "standardize"


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
    params = HEADS["logistic"].Params(select="sweep", grid={"low": 1e-4, "high": 10.0, "num": 6}, sweep_max_iter=500)
    head = HEADS["logistic"](params).fit(X, y, validation=(Xv, yv))

    grid = np.logspace(-4, 1, 6)
    scaler = StandardScaler().fit(X)
    brute = []
    for l2 in grid:
        model = LogisticRegression(C=1 / (l2 * len(y)), max_iter=10000, tol=1e-8).fit(scaler.transform(X), y)
        brute.append((model.predict(scaler.transform(Xv)) == yv).mean())
    one_sample = 1 / len(yv)
    assert max(brute) - min(brute) > 10 * one_sample  # the problem discriminates between penalties
    assert 0 < int(np.argmax(brute)) < len(grid) - 1  # ... and its best penalty is inside the grid
    np.testing.assert_allclose(head.info["sweep"]["val_top1"][::-1], brute, atol=2.5 * one_sample)  # swept high to low
    chosen = head.info["chosen_l2"]
    assert brute[int(np.argmin(np.abs(np.log(grid / chosen))))] >= max(brute) - 2.5 * one_sample

    # refit on train + val at the chosen penalty, with C = 1 / (l2 * N_train+val)
    X_all, y_all = np.concatenate([X, Xv]), np.concatenate([y, yv])
    assert head.info["C"] == pytest.approx(1 / (chosen * len(y_all)))
    scaler_all = StandardScaler().fit(X_all)
    reference = LogisticRegression(C=head.info["C"], max_iter=10000).fit(scaler_all.transform(X_all), y_all)
    np.testing.assert_allclose(head.predict_proba(Xv), reference.predict_proba(scaler_all.transform(Xv)), atol=1e-3)


def test_linear_sweep_records_the_choice():
    X, y = blobs(n_per_class=25, dim=40, spread=6.0, seed=1)
    Xv, yv = blobs(n_per_class=50, dim=40, spread=6.0, seed=1)
    params = HEADS["linear"].Params(select="sweep", grid={"low": 1e-3, "high": 1.0, "num": 4})
    head = HEADS["linear"](params).fit(X, y, validation=(Xv, yv))
    assert head.info["chosen_l2"] in head.info["sweep"]["l2"]
    assert head.info["weight_decay"] == head.info["chosen_l2"]
    with pytest.raises(ValueError, match="needs a validation split"):
        HEADS["linear"](params).fit(X, y)


def test_knn_probabilities_stay_finite_on_unnormalised_features():
    X, y = blobs()
    head = HEADS["knn"](HEADS["knn"].Params(normalize="standardize")).fit(X, y)
    proba = head.predict_proba(X)
    assert np.isfinite(proba).all() and (head.predict(X) == y).mean() > 0.9


def test_two_class_sweep_refits_scikit_learn_at_the_matching_penalty():
    """For two classes scikit-learn fits one vector w; the softmax penalty l2 matches C = 2 / (l2 N)."""
    X, y = correlated(40, sample_seed=1, n_classes=2)
    Xv, yv = correlated(100, sample_seed=2, n_classes=2)
    params = HEADS["logistic"].Params(select="sweep", grid={"low": 1e-3, "high": 1.0, "num": 4})
    head = HEADS["logistic"](params).fit(X, y, validation=(Xv, yv))
    assert head.info["C"] == pytest.approx(2 / (head.info["chosen_l2"] * (len(y) + len(yv))))
    linear = HEADS["linear"](HEADS["linear"].Params(weight_decay=head.info["chosen_l2"], max_iter=1000))
    linear.fit(np.concatenate([X, Xv]), np.concatenate([y, yv]))
    np.testing.assert_allclose(head.predict_proba(Xv), linear.predict_proba(Xv), atol=2e-3)


def test_yaml_exponent_floats_are_numbers(tmp_path):
    from pipeline.config import load_params

    (tmp_path / "params.yaml").write_text("head:\n  logistic: {C: 1e-3}\n  ridge: {alpha: 2E+1}\n")
    params = load_params(tmp_path / "params.yaml")
    assert params.head.params_of("logistic").C == 0.001 and params.head.params_of("ridge").alpha == 20.0
