"""How well frozen features suit a labelled task, before any head is trained: LogME, and rank agreement.

LogME (You, Liu, Wang and Long, *LogME: Practical Assessment of Pre-trained Models for Transfer
Learning*, ICML 2021) scores features F (N x D) for labels y by the evidence of a Bayesian linear
model: for each class c, the one-hot target y_c (N,) is modelled as y_c = F w + noise with a prior
w ~ N(0, I / alpha) and noise ~ N(0, I / beta). Its log marginal evidence,

    L(alpha, beta) = log p(y_c | F, alpha, beta) = log N(y_c; 0, I / beta + F F^T / alpha),

is maximised over the two precisions by MacKay's fixed-point updates (the paper's Algorithm 1),

    gamma = sum_i beta s_i / (alpha + beta s_i),  alpha <- gamma / |m|^2,  beta <- (N - gamma) / |F m - y_c|^2,

with m = beta (alpha I + beta F^T F)^-1 F^T y_c the posterior mean and s_i the eigenvalues of F^T F.
LogME is the maximised L / N, averaged over the classes. No bias term and no feature scaling: the
paper's model on the features as they are (the maximum is unchanged by scaling F, which alpha absorbs).

Everything is computed from one eigendecomposition of the smaller Gram matrix (F^T F, D x D, summed
over blocks of rows; or F F^T when N < D): each iteration then costs O(min(N, D) C), for all classes
at once. Head side: arrays in, numbers out; nothing here reads images or runs a backbone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import linalg

LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class LogMEResult:
    score: float
    """LogME: the maximised log evidence divided by N, averaged over the classes."""
    classes: np.ndarray
    """The labels scored, in order (those present in ``labels``)."""
    evidence: np.ndarray
    """(C,) the maximised log evidence / N of each class's one-hot target."""
    alpha: np.ndarray
    """(C,) the prior precision of the weights at the maximum."""
    beta: np.ndarray
    """(C,) the noise precision at the maximum."""
    iterations: int
    """Fixed-point iterations until every class converged (or ``max_iter``)."""
    converged: bool
    """Every class stopped by the criteria of :func:`logme` before ``max_iter``."""


@dataclass(frozen=True)
class Spectrum:
    """The features seen through one eigendecomposition: all the evidence needs, for every class at once."""

    n: int
    d: int
    s: np.ndarray
    """(K,) eigenvalues of F^T F (K = min(N, D); those at rounding level set to 0)."""
    z2: np.ndarray
    """(K, C) squared coordinates of each one-hot target on the left singular vectors u_i of F."""
    outside: np.ndarray
    """(C,) the squared norm of the part of each target outside the span of the u_i."""

    def evidence(self, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
        """log p(y_c | F, alpha, beta) for each class (not divided by N), from the spectrum."""
        s = self.s[:, None]
        denom = alpha + beta * s
        m2 = (beta**2 * s * self.z2 / denom**2).sum(0)  # |m|^2
        res = (alpha**2 * self.z2 / denom**2).sum(0) + self.outside  # |F m - y|^2, no cancellation
        logdet = np.log(denom).sum(0) + (self.d - len(self.s)) * np.log(alpha)  # log |alpha I + beta F^T F|
        normalisers = self.d * np.log(alpha) + self.n * np.log(beta) - self.n * LOG_2PI
        return (normalisers - beta * res - alpha * m2 - logdet) / 2

    def update(self, alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One fixed-point step (MacKay; the paper's Algorithm 1) for every class."""
        s = self.s[:, None]
        denom = alpha + beta * s
        gamma = (beta * s / denom).sum(0)
        m2 = (beta**2 * s * self.z2 / denom**2).sum(0)
        res = (alpha**2 * self.z2 / denom**2).sum(0) + self.outside
        tiny = np.finfo(np.float64).tiny
        return gamma / np.maximum(m2, tiny), (self.n - gamma) / np.maximum(res, tiny)


def spectrum(features: np.ndarray, labels: np.ndarray, block_rows: int = 8192) -> tuple[Spectrum, np.ndarray]:
    """The :class:`Spectrum` of ``features`` (N, D) for the one-hot targets of ``labels`` (N,), and the classes.

    N > D: F^T F and F^T Y are summed over blocks of ``block_rows`` rows (the features are never copied
    whole), then F^T F = V diag(s) V^T, and z_i^2 = (v_i^T F^T y)^2 / s_i. N <= D (in float64): F F^T =
    U diag(s) U^T, z_i = u_i^T y, and the u_i span R^N.
    """
    features = np.asarray(features)
    labels = np.asarray(labels)
    if features.ndim != 2 or labels.shape != (len(features),):
        raise ValueError(f"features must be (N, D) and labels (N,); got {features.shape} and {labels.shape}")
    n, d = features.shape
    classes, index = np.unique(labels, return_inverse=True)
    if n < 2:
        raise ValueError(f"LogME needs at least 2 labelled rows, got {n}")
    counts = np.bincount(index, minlength=len(classes)).astype(np.float64)  # |y_c|^2 of a one-hot target
    onehot = np.zeros((n, len(classes)))
    onehot[np.arange(n), index] = 1.0
    if n <= d:
        f = features.astype(np.float64)
        s, u = linalg.eigh(f @ f.T, driver="evd")
        s = np.where(_rounding(s, n, d), 0.0, s)
        z2 = (u.T @ onehot) ** 2  # on a zero eigenvalue: the part of y outside the span of F
        outside = np.zeros(len(classes))
    else:
        # F^T F = Fc^T Fc + N mu mu^T with Fc = F - mu: the centred part in the features' own precision (at least
        # float32: twice as fast as float64), the large mean part exact; both summed in float64.
        work = np.result_type(features.dtype, np.float32)
        mu = sum(features[i:i + block_rows].sum(0, dtype=np.float64) for i in range(0, n, block_rows)) / n
        gram = n * np.outer(mu, mu)
        fty = np.zeros((d, len(classes)))
        for start in range(0, n, block_rows):
            block = features[start:start + block_rows]
            centred = block.astype(work) - mu.astype(work)
            gram += centred.T @ centred
            fty += block.T.astype(np.float64) @ onehot[start:start + block_rows]
        s, v = linalg.eigh(gram, driver="evd")
        s = np.where(_rounding(s, n, d), 0.0, s)
        q2 = (v.T @ fty) ** 2
        z2 = np.divide(q2, s[:, None], out=np.zeros_like(q2), where=s[:, None] > 0)
        outside = np.maximum(counts - z2.sum(0), 0.0)  # the least-squares residual of each class
    return Spectrum(n, d, s, z2, outside), classes


def _rounding(s: np.ndarray, n: int, d: int) -> np.ndarray:
    """The eigenvalues of a Gram matrix at the level of its rounding errors (or below zero): those of a
    rank-deficient F, which are 0."""
    return s <= s.max(initial=0.0) * max(n, d) * np.finfo(np.float64).eps


def logme(features: np.ndarray, labels: np.ndarray, tol: float = 1e-8, max_iter: int = 1000,
          block_rows: int = 8192) -> LogMEResult:
    """LogME of ``features`` (N, D) for the integer ``labels`` (N,): see the module docstring.

    The fixed point is iterated from alpha = beta = 1, for every class, until alpha and beta change by less
    than ``tol`` (relative) or the evidence / N by less than ``tol`` * 1e-4: the latter stops a class whose
    best beta is infinite (targets fitted exactly, possible when N <= D), where beta grows without end while
    the evidence reaches its supremum. At most ``max_iter`` iterations.
    """
    return maximise(*spectrum(features, labels, block_rows), tol=tol, max_iter=max_iter)


def maximise(spec: Spectrum, classes: np.ndarray, tol: float = 1e-8, max_iter: int = 1000) -> LogMEResult:
    """The fixed point of :func:`logme` on a computed spectrum."""
    alpha = np.ones(len(classes))
    beta = np.ones(len(classes))
    evidence = spec.evidence(alpha, beta) / spec.n
    done = np.zeros(len(classes), dtype=bool)
    iteration = 0
    while not done.all() and iteration < max_iter:
        iteration += 1
        new_alpha, new_beta = spec.update(alpha, beta)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            new_evidence = spec.evidence(new_alpha, new_beta) / spec.n
        valid = ~done & np.isfinite(new_evidence)
        done |= ~np.isfinite(new_evidence)  # beta overflowed: keep the last finite point
        change = np.maximum(np.abs(new_alpha - alpha) / alpha, np.abs(new_beta - beta) / beta)
        stalled = np.abs(new_evidence - evidence) < tol * 1e-4
        alpha, beta, evidence = (np.where(valid, new, old) for new, old in
                                 ((new_alpha, alpha), (new_beta, beta), (new_evidence, evidence)))
        done |= valid & ((change < tol) | stalled)
    return LogMEResult(float(evidence.mean()), classes, evidence, alpha, beta, iteration, bool(done.all()))


def kendall_tau(a: Sequence[float] | Mapping[str, float], b: Sequence[float] | Mapping[str, float],
                weighted: bool = False) -> float:
    """Kendall's tau between two rankings of the same items, each given by scores (higher ranks first): 1 when
    they order the items alike, -1 when reversed. Two mappings are matched by key (e.g. backbone name -> LogME,
    backbone name -> test top-1); two sequences by position.

    ``weighted``: the weighted tau of the LogME paper (``scipy.stats.weightedtau``, hyperbolic weights: swaps
    among the top-ranked items count more). Otherwise tau-b (``scipy.stats.kendalltau``; ties allowed).
    """
    from scipy import stats

    if isinstance(a, Mapping) or isinstance(b, Mapping):
        if not (isinstance(a, Mapping) and isinstance(b, Mapping)) or set(a) != set(b):
            raise ValueError(f"both rankings must score the same items; got {sorted(a)} and {sorted(b)}")
        keys = sorted(a)
        a, b = [a[k] for k in keys], [b[k] for k in keys]
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"two rankings of the same 2 or more items are needed; got shapes {a.shape} and {b.shape}")
    result = stats.weightedtau(a, b) if weighted else stats.kendalltau(a, b)
    return float(result.statistic)
