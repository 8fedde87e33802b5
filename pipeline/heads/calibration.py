"""Temperature scaling: one number T that turns a head's scores into calibrated probabilities softmax(scores / T).

T is fitted on held-out images (the validation split) by minimising the mean negative log-likelihood
(NLL) of their labels. With beta = 1 / T the NLL, mean(logsumexp(beta s) - beta s_label), is convex in
beta: its derivative mean(E_p[s] - s_label) increases, its second derivative is the mean variance of
the scores under p = softmax(beta s). The fit finds the root of the derivative by Newton steps kept
inside a shrinking bracket (a bisection in log beta when a step would leave it): exact to the last
digits in a few steps. Dividing by T > 0 never changes which class scores highest.
"""

from __future__ import annotations

import numpy as np

TEMPERATURE_BOUNDS = (1e-3, 1e3)
"""T is searched in this range; a validation split on which every image is right, with margin, has no
finite best T and gets the lower bound."""


def _as_float64(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if scores.ndim != 2 or len(scores) != len(labels) or len(labels) == 0:
        raise ValueError(f"expected scores (N, C) and labels (N,) with N > 0, got {scores.shape} and {labels.shape}")
    return scores, labels


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax of scores (N, C), in their dtype; a score of -inf gets probability 0. (Not scipy's:
    importing scipy.special costs 0.16 s of every head swap's train stage.)"""
    p = np.exp(scores - scores.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return p


def logsumexp(scores: np.ndarray) -> np.ndarray:
    """log(sum(exp(scores))) of each row of (N, C), without overflow."""
    top = scores.max(axis=1)
    return top + np.log(np.exp(scores - top[:, None]).sum(axis=1))


def mean_nll(scores: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under softmax(scores / temperature)."""
    scores, labels = _as_float64(scores, labels)
    z = scores / temperature
    return float(np.mean(logsumexp(z) - z[np.arange(len(labels)), labels]))


def _slope_and_curvature(scores: np.ndarray, label_scores: np.ndarray, beta: float) -> tuple[float, float]:
    """First and second derivatives of the mean NLL in beta = 1 / T."""
    p = softmax(beta * scores)
    present = p > 0  # a score of -inf (a class the head never saw) has p = 0 and adds nothing
    s = np.where(present, scores, 0.0)
    expected = (p * s).sum(axis=1)
    variance = (p * np.square(s - expected[:, None])).sum(axis=1)
    return float(np.mean(expected - label_scores)), float(np.mean(variance))


def fit_temperature(scores: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
                    max_steps: int = 200) -> float:
    """The temperature T in ``bounds`` that minimises :func:`mean_nll` of (scores, labels)."""
    scores, labels = _as_float64(scores, labels)
    label_scores = scores[np.arange(len(labels)), labels]
    if not np.isfinite(label_scores).all():
        raise ValueError("some images score -inf for their own class: no temperature gives them a probability")
    low, high = 1.0 / bounds[1], 1.0 / bounds[0]  # the bracket, in beta
    if _slope_and_curvature(scores, label_scores, low)[0] >= 0:
        return bounds[1]
    if _slope_and_curvature(scores, label_scores, high)[0] <= 0:
        return bounds[0]
    beta = float(np.clip(1.0, low, high))
    for _ in range(max_steps):
        slope, curvature = _slope_and_curvature(scores, label_scores, beta)
        if slope == 0:
            break
        if slope > 0:
            high = beta
        else:
            low = beta
        step = beta - slope / curvature if curvature > 0 else np.nan
        following = step if low < step < high else float(np.sqrt(low * high))
        converged = abs(following - beta) <= 1e-12 * beta
        beta = following
        if converged:
            break
    return 1.0 / beta
