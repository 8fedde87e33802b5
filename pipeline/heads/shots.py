"""Many small fits of one head configuration: what a head needs to draw the learning curve.

:meth:`pipeline.heads.base.PooledHead.curve_fits` fits a head configuration on each of several training
sets (:class:`ShotSet`, the k-shot sets of :mod:`pipeline.analyses.curves`) and scores each fit on one test split
(:class:`TestSplit`); a head kind with a faster way to do the same (one matrix factorisation for every
penalty, every fold fitted at once) overrides it. Each fit is reported as a :class:`ShotFit`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

from pipeline.heads.metrics import top1

if TYPE_CHECKING:
    from pipeline.core.config import CurvesParams


@dataclass(frozen=True)
class ShotSet:
    """One training set of the curve: ``rows`` index the training split (sorted); ``seed`` seeds the
    folds of a penalty chosen inside the set."""

    rows: np.ndarray = field(repr=False)
    seed: int


@dataclass
class ShotFit:
    """One fit, scored on the test split."""

    top1: float
    l2: float | None = None
    """The L2 penalty of the fit: l2 in mean loss + l2 / 2 ||W||^2 (cross-entropy for logistic and linear,
    squared error on one-hot targets for ridge, whose alpha is l2 N / 2)."""
    C: float | None = None
    """scikit-learn's C of a logistic fit: 1 / (l2 N)."""
    selection: str = "configured"
    """How the penalty was set: ``cv`` (chosen inside the set), ``fixed`` (``curves.fixed_l2``: too few
    images per class to choose) or ``configured`` (the head's own params)."""
    cv_top1: float | None = None
    """Held-out top-1 at the chosen penalty, inside the set."""
    neighbours: int | None = None
    """k-NN: neighbours used, min(knn.k, training images)."""


class TestSplit:
    """The test features and labels, with what every fit's scoring shares (a normalised copy, made once)."""

    __test__ = False  # not a pytest class

    def __init__(self, X: np.ndarray, y: np.ndarray, block_rows: int = 1 << 16):
        self.X, self.y, self.block_rows = X, y, block_rows
        self._normalised: dict[str, np.ndarray] = {}

    def normalised(self, mode: str, transform: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """The test features under the per-row normalisation ``mode`` (``transform``), computed once per mode."""
        if mode not in self._normalised:
            self._normalised[mode] = transform(self.X)
        return self._normalised[mode]

    def accuracy(self, scores: np.ndarray) -> float:
        return top1(scores, self.y)

    def exact_top1(self, head) -> float:
        """Test top-1 computed as the evaluate stage computes it (decision_function, block by block)."""
        n, b = len(self.y), self.block_rows
        return self.accuracy(np.concatenate([head.decision_function(self.X[s : s + b]) for s in range(0, n, b)]))


def chooses_penalty(y: np.ndarray, n_classes: int, curves: CurvesParams) -> bool:
    """Whether a penalty is chosen inside a set with labels ``y``: every class has at least
    ``curves.min_shots_for_cv`` images (else the penalty is ``curves.fixed_l2``)."""
    return int(np.bincount(y, minlength=n_classes).min()) >= curves.min_shots_for_cv


def first_best(accuracies: list[float]) -> int:
    """The index of the first maximum: with penalties strongest first, ties go to the stronger one."""
    return int(np.argmax(accuracies))
