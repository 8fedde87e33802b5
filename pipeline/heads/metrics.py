"""Classification metrics from class scores: top-1 and its intervals, the paired test between heads,
calibration, and the choice of a head on validation. Numbers only; their pictures and table are
:mod:`pipeline.reports.figures`."""

from __future__ import annotations

import math
from fractions import Fraction
from statistics import NormalDist

import numpy as np


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts (n_classes, n_classes): row = true class, column = predicted class."""
    return np.bincount(labels * n_classes + predicted, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def top1(scores: np.ndarray, labels: np.ndarray) -> float:
    """The share of rows whose highest score is their label's."""
    return float(np.mean(scores.argmax(axis=1) == labels))


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    top = np.argpartition(-scores, kth=k - 1, axis=1)[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


Z95 = 1.959963984540054
"""The 97.5% quantile of the standard normal: 95% two-sided intervals."""


def t_quantile(df: int, p: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` (a positive integer) degrees of freedom: its distribution in
    closed form for an integer df (Abramowitz and Stegun 26.7.3 and 26.7.4, P(|T| <= sqrt(df) tan a) as a
    finite sum in the angle a), solved for a by bisection to double precision. scipy's ``stdtrit`` to 1e-10
    (tested); not imported, as for :func:`wilson_interval`: scipy.special costs 0.12 to 0.19 s of the report
    stage, which a head swap re-runs."""
    if df < 1 or df != int(df) or not 0 < p < 1:
        raise ValueError(f"t_quantile needs a positive integer df and 0 < p < 1, not df={df}, p={p}")
    target, low, high = abs(2 * p - 1), 0.0, math.pi / 2
    for _ in range(64):
        middle = (low + high) / 2
        low, high = (middle, high) if _t_central(middle, int(df)) < target else (low, middle)
    t = math.sqrt(df) * math.tan((low + high) / 2)
    return t if p >= 0.5 else -t


def _t_central(angle: float, df: int) -> float:
    """P(|T| <= sqrt(df) tan(angle)) for Student's t with the integer ``df``."""
    s, c2 = math.sin(angle), math.cos(angle) ** 2
    if df % 2 == 0:  # sin a (1 + 1/2 cos^2 a + 1*3/(2*4) cos^4 a + ... up to cos^(df-2) a)
        term = total = 1.0
        for k in range(1, df // 2):
            term *= (2 * k - 1) / (2 * k) * c2
            total += term
        return s * total
    if df == 1:
        return 2 * angle / math.pi
    term = total = math.cos(angle)  # 2/pi (a + sin a (cos a + 2/3 cos^3 a + ... up to cos^(df-2) a))
    for k in range(1, (df - 1) // 2):
        term *= 2 * k / (2 * k + 1) * c2
        total += term
    return 2 / math.pi * (angle + s * total)


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion correct / n (95% by default): well-behaved near 0 and 1,
    unlike the normal approximation.

    The closed form, the same bounds as scipy's ``binomtest(...).proportion_ci(method="wilson")`` (to 1e-12,
    tested); not that call, because importing scipy.stats costs 0.7 s (1.4 s under load) on a 2-core CPU in
    each of the three commands a head swap runs (evaluate, compare, report), of a 10-s budget."""
    if n == 0:
        return float("nan"), float("nan")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p, z2 = correct / n, z * z / n
    centre = (p + z2 / 2) / (1 + z2)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n)) / (1 + z2)
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_of_proportions_interval(correct: np.ndarray, n: np.ndarray, z: float = Z95) -> tuple[float, float]:
    """95% interval of the mean of per-class proportions correct_c / n_c (the classes present): normal
    approximation with the binomial variance of each class, var = sum_c p_c (1 - p_c) / n_c / C^2."""
    present = n > 0
    p = correct[present] / n[present]
    mean = p.mean()
    half = z * np.sqrt((p * (1 - p) / n[present]).sum()) / present.sum()
    return float(max(0.0, mean - half)), float(min(1.0, mean + half))


def mcnemar_exact(a_correct: np.ndarray, b_correct: np.ndarray) -> dict:
    """Exact McNemar test of two classifiers on the same images: only the discordant pairs count (b: A right
    and B wrong, c: the reverse); under the null both are equally likely, p = P(Binomial(b + c, 1/2) as
    extreme as observed), two-sided: twice the smaller tail, in exact integers (scipy's
    ``binomtest(min(b, c), b + c).pvalue``, tested; not imported, as for :func:`wilson_interval`)."""
    b = int((a_correct & ~b_correct).sum())
    c = int((~a_correct & b_correct).sum())
    n = b + c
    term = tail = 1  # C(n, 0); each next binomial coefficient from the last (math.comb each: 50 times slower at 400)
    for i in range(min(b, c)):
        term = term * (n - i) // (i + 1)
        tail += term
    p = 1.0 if b == c else min(1.0, float(Fraction(2 * tail, 2**n)))
    return {"only_first_right": b, "only_second_right": c, "p_value": p}


def classification_metrics(scores: np.ndarray, labels: np.ndarray, classes: list[str]) -> tuple[dict, dict]:
    """(the figures a user compares, the details). Figures: n, top-1 with its 95% Wilson interval, top-5
    (more than 5 classes), mean per-class accuracy with its 95% interval. Details: per-class accuracy
    and the confusion matrix."""
    n_classes = len(classes)
    predicted = scores.argmax(axis=1)
    cm = confusion_matrix(labels, predicted, n_classes)
    support, right = cm.sum(axis=1), np.diag(cm)
    per_class = np.divide(right, support, out=np.full(n_classes, np.nan), where=support > 0)
    correct = int(right.sum())
    low, high = wilson_interval(correct, len(labels))
    out = {"n": int(len(labels)), "top1": correct / max(len(labels), 1), "top1_low": low, "top1_high": high}
    if n_classes > 5:
        out["top5"] = top_k_accuracy(scores, labels, 5)
    out["mean_class_accuracy"] = float(np.nanmean(per_class))
    out["mean_class_low"], out["mean_class_high"] = mean_of_proportions_interval(right, support)
    details = {
        # a class absent from the split has no accuracy: null in JSON
        "per_class_accuracy": {c: None if np.isnan(a) else round(float(a), 6) for c, a in zip(classes, per_class)},
        "confusion_matrix": cm.tolist(),
    }
    return out, details


def calibration(proba: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict:
    """Expected calibration error of the top-1 confidence, with the per-bin statistics.

    ECE = sum over equal-width confidence bins of (bin share) * |accuracy - mean confidence|.
    """
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    acc = np.bincount(which, weights=correct, minlength=n_bins) / np.maximum(count, 1)
    conf = np.bincount(which, weights=confidence, minlength=n_bins) / np.maximum(count, 1)
    ece = float(np.sum(count / max(len(labels), 1) * np.abs(acc - conf)))
    return {"ece": ece, "edges": edges.tolist(), "count": count.tolist(), "accuracy": acc.tolist(), "confidence": conf.tolist()}


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjustment of m p-values (family-wise error rate): the i-th smallest becomes
    max over j <= i of min(1, (m - j + 1) p_(j)); a hypothesis is rejected at alpha when its adjusted p < alpha."""
    order = sorted(p_values, key=p_values.get)
    adjusted, running = {}, 0.0
    for i, key in enumerate(order):
        running = max(running, min(1.0, (len(order) - i) * p_values[key]))
        adjusted[key] = running
    return adjusted


def held_out_val_top1(row: dict) -> float | None:
    """A head's top-1 on images it was not fitted on, from the validation split (a swept head's: measured by
    its sweep before the refit); None without a validation split."""
    return row.get("val", {}).get("top1")


def validation_order(rows: list[dict]) -> list[dict]:
    """The heads that have a held-out val figure, best first: the highest val top-1; on a tie the cheaper fit,
    then the first given. The first is the head to use, chosen without the test set."""
    scored = [(i, r) for i, r in enumerate(rows) if held_out_val_top1(r) is not None]
    scored.sort(key=lambda ir: (-held_out_val_top1(ir[1]), ir[1].get("fit_seconds", float("inf")), ir[0]))
    return [r for _, r in scored]


def chosen_on_validation(rows: list[dict]) -> dict | None:
    """The head to use (:func:`validation_order`'s first); None when no head has a validation figure."""
    return next(iter(validation_order(rows)), None)
