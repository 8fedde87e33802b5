"""Learning curves: test top-1 against the number of labelled training images per class, from the cache.

Head side only: everything here reads pooled features and labels (from the feature store), never an
image or the backbone. The protocol (docs/learning-curves.md):

- **Draws.** For each k of ``curves.shots`` and each of ``curves.draws`` draws, k training images per
  class are drawn from the *train* split only (stratified: min(k, images of the class) of every
  class). Draw d orders each class's images at random with a generator seeded from (``seed``, d); the
  k-shot set is the first k of each class, so the sets of one draw are nested (the 2-shot set holds the
  1-shot set). ``all`` is one draw: the whole train split. A k at least as large as every class is the
  whole split and is left out (it is ``all``).
- **Selection inside the k-shot set.** Heads with an L2 penalty chosen by the curve (``logistic``,
  ``linear``) choose it by stratified ``cv_folds``-fold cross-validation *inside the k-shot set*
  (normalisation refitted on each fold's training part) when every class has at least
  ``min_shots_for_cv`` images, else use ``fixed_l2``; then refit on the whole k-shot set. The
  validation and test splits are never seen by a fit or a selection. At ``all`` every head is fitted
  exactly as the train stage fits it, with its own params: the curve's ``all`` point is that head's
  test top-1 from the evaluate stage.
- **Scores.** Each fit is scored on the whole test split. Per k and head: the mean, the standard
  deviation (ddof = 1) and a t-interval (level ``confidence``) of test top-1 over the draws.

The fast paths compute what the heads compute, without redundant work: the penalty's cross-validation
fits all folds at once (one pass over the k-shot set per L-BFGS step for every fold, warm-started along
the grid); ridge accumulates the moments of the nested k-shot sets once per draw and solves its normal
equations for each k; k-NN computes the test-train similarities once per block of test rows and takes
every draw's neighbours from them; linear heads score the test split through their normalisation folded
into the weights.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from pipeline.config import ALL_SHOTS, CurvesParams, HeadConfig
from pipeline.fileutil import atomic_path, write_json
from pipeline.heads import head_class
from pipeline.heads.base import FeatureNormalizer
from pipeline.heads.linear import LinearModelHead, c_from_l2

PENALISED = ("logistic", "linear")
"""Kinds whose L2 penalty the curve chooses inside the k-shot set."""
KNN_BLOCK = 1024
"""Test rows per block of similarities (as the knn head scores)."""
DRAW_STREAM = 0x6375  # "cu": keeps the draws' random stream apart from other uses of the seed


# -- the draws ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Draw:
    """One k-shot training set: ``rows`` index the train split (sorted)."""

    shots: int | str
    draw: int
    rows: np.ndarray = field(repr=False)


def class_orders(labels: np.ndarray, n_classes: int, draws: int, seed: int) -> list[list[np.ndarray]]:
    """For each draw, each class's training rows in a random order seeded from (seed, draw)."""
    orders = []
    for d in range(draws):
        rng = np.random.default_rng([seed, DRAW_STREAM, d])
        orders.append([rng.permutation(np.flatnonzero(labels == c)) for c in range(n_classes)])
    return orders


def shot_rows(order: list[np.ndarray], k: int) -> np.ndarray:
    """The k-shot set of one draw: the first k rows of each class (all of a smaller class), sorted."""
    return np.sort(np.concatenate([o[:k] for o in order]))


def plan_draws(labels: np.ndarray, n_classes: int, curves: CurvesParams, seed: int,
               log: Callable[[str], None] = print) -> tuple[list[Draw], list[list[np.ndarray]]]:
    """Every k-shot set of the curve, in order of k then draw; and the class orders they come from."""
    orders = class_orders(labels, n_classes, curves.draws, seed)
    largest = int(np.bincount(labels, minlength=n_classes).max()) if len(labels) else 0
    plan = []
    for k in curves.shots:
        if k == ALL_SHOTS:
            plan.append(Draw(ALL_SHOTS, 0, np.arange(len(labels))))
        elif k >= largest:
            log(f"k = {k}: every class has at most {largest} training images, so this is the whole split: left out")
        else:
            plan += [Draw(k, d, shot_rows(order, k)) for d, order in enumerate(orders)]
    return plan, orders


# -- one fit ------------------------------------------------------------------------------------
@dataclass
class Fit:
    """A head fitted on one k-shot set and scored on the whole test split."""

    head: str
    kind: str
    shots: int | str
    draw: int
    n_train: int
    top1: float
    l2: float | None = None
    """The L2 penalty of the fit (mean cross-entropy + l2 / 2 ||W||^2), for penalised kinds."""
    C: float | None = None
    """scikit-learn's C of the logistic fit: 1 / (l2 N)."""
    selection: str = "configured"
    """How the penalty was set: ``cv`` (cross-validation in the k-shot set), ``fixed`` (``fixed_l2``,
    too few images per class for cv) or ``configured`` (the head's own params: k = all, and the kinds
    without a chosen penalty)."""
    cv_top1: float | None = None
    """Cross-validated top-1 at the chosen penalty (inside the k-shot set)."""
    neighbours: int | None = None
    """k-NN: neighbours used, min(knn.k, training images)."""


class TestSplit:
    """The test features and labels, with what every fit's scoring shares."""

    def __init__(self, X: np.ndarray, y: np.ndarray, block_rows: int):
        self.X, self.y, self.block_rows = X, y, block_rows
        self._l2: np.ndarray | None = None

    def normalised(self, mode: str) -> np.ndarray:
        """The test features under a per-row normalisation (``none``, ``l2``), computed once."""
        if mode == "none":
            return self.X
        if self._l2 is None:
            self._l2 = FeatureNormalizer("l2").transform(self.X)
        return self._l2

    def accuracy(self, scores: np.ndarray) -> float:
        return float((scores.argmax(axis=1) == self.y).mean())

    def top1(self, head) -> float:
        """Test top-1 of a fitted head; a linear head's normalisation is folded into its weights
        (no normalised copy of the test split per fit)."""
        if not isinstance(head, LinearModelHead):
            return self.accuracy(head.decision_function(self.X))
        norm = head.normalizer
        if norm.mode == "standardize":
            coef = head.coef / norm.scale
            return self.accuracy(self.X @ coef.T + (head.intercept - coef @ norm.mean))
        return self.accuracy(self.normalised(norm.mode) @ head.coef.T + head.intercept)

    def exact_top1(self, head) -> float:
        """Test top-1 computed as the evaluate stage computes it (decision_function, block by block)."""
        n, b = len(self.y), self.block_rows
        scores = [head.decision_function(self.X[s : s + b]) for s in range(0, n, b)]
        return self.accuracy(np.concatenate(scores))


# -- the penalty, chosen inside the k-shot set -------------------------------------------------
@dataclass(frozen=True)
class Selection:
    l2: float
    grid: list[float]
    """Penalties tried, strongest first."""
    cv_top1: list[float]
    """Cross-validated top-1 at each penalty: held-out predictions of every fold, pooled."""


def fold_seed(seed: int, k: int, draw: int) -> int:
    return int(np.random.SeedSequence([seed, DRAW_STREAM, k, draw]).generate_state(1)[0])


def select_l2(X: np.ndarray, y: np.ndarray, rows: np.ndarray, n_classes: int, curves: CurvesParams,
              normalize: str, seed: int) -> Selection:
    """Choose the L2 penalty of a softmax-regression head by stratified k-fold cross-validation on
    the rows ``rows`` of (X, y) alone.

    Every fold's model is fitted at once: the folds' weights W_f (in each fold's own normalisation,
    fitted on the fold's training part) are stacked, so one product of the k-shot features with the
    stacked weights serves every fold; the objective is the sum of the folds' objectives (mean
    cross-entropy over the fold's training rows + l2 / 2 ||W_f||^2), which are independent. Full-batch
    L-BFGS, ``cv_max_iter`` iterations per penalty, from the strongest penalty to the weakest, each
    warm-started from the previous solution; ties go to the stronger penalty.
    """
    import torch
    import torch.nn.functional as F
    from sklearn.model_selection import StratifiedKFold

    from pipeline.device import torch_device

    Xk, yk = np.asarray(X[rows], dtype=np.float32), np.asarray(y[rows], dtype=np.int64)
    n, dim = Xk.shape
    folds = curves.cv_folds
    fold_of = np.empty(n, np.int64)
    for f, (_, held) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(n), yk)):
        fold_of[held] = f
    mean, scale = np.zeros((folds, dim), np.float32), np.ones((folds, dim), np.float32)
    if normalize == "l2":
        Xk = FeatureNormalizer("l2").transform(Xk)
    elif normalize == "standardize":  # moments of each fold's training part, as FeatureNormalizer fits them
        sums = np.stack([Xk[fold_of == f].sum(axis=0, dtype=np.float64) for f in range(folds)])
        squares = np.stack([np.square(Xk[fold_of == f], dtype=np.float64).sum(axis=0) for f in range(folds)])
        counts = np.bincount(fold_of, minlength=folds)[:, None]
        m = (sums.sum(axis=0) - sums) / (n - counts)
        sd = np.sqrt(np.maximum((squares.sum(axis=0) - squares) / (n - counts) - m**2, 0.0))
        mean, scale = m.astype(np.float32), np.where(sd > 1e-12, sd, 1.0).astype(np.float32)

    device = torch_device()
    features = torch.as_tensor(Xk, device=device)
    labels = torch.as_tensor(yk, device=device)[:, None, None].expand(n, folds, 1)
    training = torch.as_tensor(fold_of[:, None] != np.arange(folds), device=device)  # (n, folds)
    weight = training.float() / training.sum(dim=0)  # mean over each fold's training rows
    held_out = ~training
    mean_t, inv_scale = torch.as_tensor(mean, device=device), torch.as_tensor(1.0 / scale, device=device)
    W = torch.zeros(folds, n_classes, dim, device=device, requires_grad=True)
    b = torch.zeros(folds, n_classes, device=device, requires_grad=True)

    def logits() -> torch.Tensor:  # ((X - m_f) / s_f) W_f^T + b_f for every fold, in one product
        V = W * inv_scale[:, None, :]
        c = b - (V * mean_t[:, None, :]).sum(dim=2)
        return (features @ V.reshape(folds * n_classes, dim).T).view(n, folds, n_classes) + c

    grid = curves.grid.values()[::-1]
    accuracies = []
    for l2 in grid:
        opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=curves.cv_max_iter, history_size=20, tolerance_grad=1e-5,
                                tolerance_change=1e-7, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            nll = -F.log_softmax(logits(), dim=2).gather(2, labels).squeeze(2)  # (n, folds)
            loss = (nll * weight).sum() + 0.5 * float(l2) * W.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            correct = (logits().argmax(dim=2) == labels[:, :, 0]) & held_out
            accuracies.append(float(correct.sum()) / n)
    best = int(np.argmax(accuracies))  # first maximum: the strongest penalty among ties
    return Selection(float(grid[best]), grid.tolist(), accuracies)


def penalised_params(config: HeadConfig, l2: float, n_rows: int, n_classes: int):
    """The head's params with its penalty set to l2 (select: fixed)."""
    if config.kind == "logistic":
        return config.params.model_copy(update={"C": c_from_l2(l2, n_rows, n_classes), "select": "fixed"})
    return config.params.model_copy(update={"weight_decay": l2, "select": "fixed"})


# -- the curve of each kind ---------------------------------------------------------------------
@dataclass
class Curve:
    X: np.ndarray
    y: np.ndarray
    test: TestSplit
    n_classes: int
    curves: CurvesParams
    seed: int
    plan: list[Draw]
    orders: list[list[np.ndarray]]


def _configured(data: Curve, config: HeadConfig, name: str, draw: Draw) -> Fit:
    """A head fitted with its own params; at k = all exactly as the train stage fits it."""
    head = head_class(config.kind)(config.params, seed=data.seed)
    if draw.shots == ALL_SHOTS:
        head.fit(data.X, data.y, n_classes=data.n_classes)
        top1 = data.test.exact_top1(head)
    else:
        head.fit(data.X[draw.rows], data.y[draw.rows], n_classes=data.n_classes)
        top1 = data.test.top1(head)
    fit = Fit(name, config.kind, draw.shots, draw.draw, len(draw.rows), top1)
    if config.kind == "logistic":
        fit.C = head.info["C"]
        fit.l2 = (2.0 if data.n_classes == 2 else 1.0) / (fit.C * len(draw.rows))
    elif config.kind == "linear":
        fit.l2 = head.info["weight_decay"]
    elif config.kind == "knn":
        fit.neighbours = min(config.params.k, len(draw.rows))
    return fit


def _penalised_curve(data: Curve, config: HeadConfig, name: str) -> list[Fit]:
    curves, fits = data.curves, []
    for draw in data.plan:
        if draw.shots == ALL_SHOTS:
            fits.append(_configured(data, config, name, draw))
            continue
        smallest = int(np.bincount(data.y[draw.rows], minlength=data.n_classes).min())
        selection = None
        if smallest >= curves.min_shots_for_cv:
            selection = select_l2(data.X, data.y, draw.rows, data.n_classes, curves, config.params.normalize,
                                  seed=fold_seed(data.seed, int(draw.shots), draw.draw))
        l2 = selection.l2 if selection else curves.fixed_l2
        params = penalised_params(config, l2, len(draw.rows), data.n_classes)
        head = head_class(config.kind)(params, seed=data.seed)
        head.fit(data.X[draw.rows], data.y[draw.rows], n_classes=data.n_classes)
        fit = Fit(name, config.kind, draw.shots, draw.draw, len(draw.rows), data.test.top1(head), l2=l2,
                  selection="cv" if selection else "fixed")
        if selection:
            fit.cv_top1 = selection.cv_top1[selection.grid.index(l2)]
        if config.kind == "logistic":
            fit.C = params.C
        fits.append(fit)
    return fits


def _ridge_curve(data: Curve, config: HeadConfig, name: str) -> list[Fit]:
    """Ridge on every draw's nested k-shot sets from moments accumulated once per draw.

    For the k-shot set: G = sum x x^T, s = sum x, R = sum x y^T (one-hot y) in float64, updated with
    the rows each larger k adds. Standardised and centred, the normal equations of the ridge head are
    ((G - n m m^T) / (sd sd^T) + alpha I) W = (R - n m ybar^T) / sd, solved by Cholesky; the
    scores on raw test features are X (W / sd) + ybar - (m / sd) W. (The head itself at k = all.)
    """
    from scipy.linalg import cho_factor, cho_solve

    p, C = config.params, data.n_classes
    mode = p.normalize
    source = FeatureNormalizer("l2").transform(data.X) if mode == "l2" else data.X
    test = data.test.normalised("none" if mode == "standardize" else mode)
    numeric = sorted({d.shots for d in data.plan if d.shots != ALL_SHOTS})
    result: dict[tuple, float] = {}
    for d, order in enumerate(data.orders):
        dim = source.shape[1]
        G, s, R, counts, taken = np.zeros((dim, dim)), np.zeros(dim), np.zeros((dim, C)), np.zeros(C), 0
        for k in numeric:
            new = np.concatenate([o[taken:k] for o in order])
            taken = k
            Xi = source[new].astype(np.float64)
            onehot = np.eye(C)[data.y[new]]
            G += Xi.T @ Xi
            s += Xi.sum(axis=0)
            R += Xi.T @ onehot
            counts += onehot.sum(axis=0)
            n = counts.sum()
            m, ybar = s / n, counts / n
            if mode == "standardize":
                sd = np.sqrt(np.maximum(np.diag(G) / n - m**2, 0.0))
                sd = np.where(sd > 1e-12, sd, 1.0)
            else:
                sd = np.ones_like(m)
            A = (G - n * np.outer(m, m)) / np.outer(sd, sd)
            A[np.diag_indices_from(A)] += p.alpha
            B = (R - n * np.outer(m, ybar)) / sd[:, None]
            try:
                W = cho_solve(cho_factor(A), B)
            except np.linalg.LinAlgError:  # alpha = 0 and fewer images than dimensions
                W = np.linalg.lstsq(A, B, rcond=None)[0]
            coef = (W / sd[:, None]).T.astype(np.float32)
            intercept = (ybar - (m / sd) @ W).astype(np.float32)
            result[(k, d)] = data.test.accuracy(test @ coef.T + intercept)
    fits = []
    for draw in data.plan:
        if draw.shots == ALL_SHOTS:
            fits.append(_configured(data, config, name, draw))
        else:
            fits.append(Fit(name, config.kind, draw.shots, draw.draw, len(draw.rows), result[(draw.shots, draw.draw)]))
    return fits


def _knn_curve(data: Curve, config: HeadConfig, name: str) -> list[Fit]:
    """k-NN for every draw from one product of the test features with all training features per block
    of test rows, as the knn head computes it: its normalisation, its float16 feature bank, cosine
    similarities, the top min(k, bank) neighbours, votes weighted by exp((s - max s) / temperature)."""
    import torch

    p, C = config.params, data.n_classes
    norm = FeatureNormalizer(p.normalize)
    bank = norm.transform(data.X).astype(np.float16).astype(np.float32)  # the knn head stores float16
    test = norm.transform(data.test.X)
    labels = torch.as_tensor(data.y)
    columns = [None if d.shots == ALL_SHOTS else torch.as_tensor(d.rows) for d in data.plan]
    correct = np.zeros(len(data.plan))
    for start in range(0, len(test), KNN_BLOCK):
        sims = torch.from_numpy(test[start : start + KNN_BLOCK] @ bank.T)
        truth = torch.as_tensor(data.test.y[start : start + KNN_BLOCK])
        for j, cols in enumerate(columns):
            s = sims if cols is None else sims.index_select(1, cols)
            near, idx = torch.topk(s, min(p.k, s.shape[1]), dim=1)  # sorted: the first is the largest
            votes = torch.exp((near - near[:, :1]) / p.temperature)
            idx = idx if cols is None else cols[idx]
            scores = torch.zeros(len(s), C).scatter_add_(1, labels[idx], votes)
            correct[j] += int((scores.argmax(dim=1) == truth).sum())
    return [Fit(name, config.kind, d.shots, d.draw, len(d.rows), correct[j] / len(data.test.y),
                neighbours=min(p.k, len(d.rows))) for j, d in enumerate(data.plan)]


def _generic_curve(data: Curve, config: HeadConfig, name: str) -> list[Fit]:
    return [_configured(data, config, name, draw) for draw in data.plan]


def learning_curve(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], n_classes: int,
                   curves: CurvesParams, seed: int, block_rows: int = 1 << 16,
                   log: Callable[[str], None] = print) -> list[Fit]:
    """Fit every head of ``curves.heads`` on every k-shot set of the training split and score it on
    the test split. ``block_rows``: rows per block when scoring at k = all (the evaluate stage's)."""
    X, y = train
    plan, orders = plan_draws(y, n_classes, curves, seed, log)
    data = Curve(X, y, TestSplit(*test, block_rows), n_classes, curves, seed, plan, orders)
    fits = []
    for config in curves.head_configs():
        name = config.key.rsplit(".", 1)[1]
        start = time.perf_counter()
        if config.kind in PENALISED:
            head_fits = _penalised_curve(data, config, name)
        elif config.kind == "ridge":
            head_fits = _ridge_curve(data, config, name)
        elif config.kind == "knn" and config.params.normalize != "standardize":
            head_fits = _knn_curve(data, config, name)
        else:
            head_fits = _generic_curve(data, config, name)
        seconds = time.perf_counter() - start
        for line in describe(head_fits, curves.confidence):
            log(line)
        log(f"{name}: {len(head_fits)} fits in {seconds:.1f} s")
        fits += head_fits
    return fits


# -- summaries ----------------------------------------------------------------------------------
@dataclass
class Point:
    """One point of the curve: a head at one k, over its draws."""

    head: str
    shots: int | str
    k: float
    """Labelled training images per class: k, or the mean per class for ``all``."""
    n_draws: int
    n_train: float
    mean: float
    std: float | None
    low: float | None
    high: float | None
    penalty: str = ""


def t_interval(values: list[float], confidence: float) -> tuple[float, float | None, float | None, float | None]:
    """Mean, standard deviation (ddof 1) and the t-interval of the mean at ``confidence``; None where
    there is a single value."""
    from scipy.stats import t

    v = np.asarray(values, dtype=np.float64)
    mean = float(v.mean())
    if len(v) < 2:
        return mean, None, None, None
    std = float(v.std(ddof=1))
    half = float(t.ppf((1 + confidence) / 2, len(v) - 1)) * std / math.sqrt(len(v))
    return mean, std, mean - half, mean + half


def _penalty_text(fits: list[Fit]) -> str:
    if fits[0].l2 is None:
        return f"{fits[0].neighbours} neighbours" if fits[0].neighbours is not None else ""
    how = {"cv": "CV", "fixed": "fixed", "configured": "configured"}
    counts: dict[tuple[float, str], int] = {}
    for f in fits:
        counts[(f.l2, f.selection)] = counts.get((f.l2, f.selection), 0) + 1
    parts = [f"l2 {l2:.3g} {how[sel]}" + (f" x{c}" if len(fits) > 1 else "") for (l2, sel), c in sorted(counts.items())]
    if fits[0].selection == "configured" and fits[0].C is not None:
        parts[0] += f" (C = {fits[0].C:.3g})"
    return ", ".join(parts)


def summarise(fits: list[Fit], n_classes: int, confidence: float) -> list[Point]:
    """Points per head and k (in the order of the fits)."""
    groups: dict[tuple[str, int | str], list[Fit]] = {}
    for f in fits:
        groups.setdefault((f.head, f.shots), []).append(f)
    points = []
    for (head, shots), group in groups.items():
        mean, std, low, high = t_interval([f.top1 for f in group], confidence)
        n_train = float(np.mean([f.n_train for f in group]))
        k = n_train / n_classes if shots == ALL_SHOTS else float(shots)
        points.append(Point(head, shots, k, len(group), n_train, mean, std, low, high, _penalty_text(group)))
    return points


def describe(fits: list[Fit], confidence: float) -> Iterable[str]:
    """One printed line per k of one head: mean, spread, and the penalty chosen and how."""
    for p in summarise(fits, 1, confidence):
        spread = f" +- {p.std:.4f} [{p.low:.4f}, {p.high:.4f}]" if p.std is not None else ""
        line = f"{p.head:>16} k={str(p.shots):>5}: test top-1 {p.mean:.4f}{spread} ({p.n_draws} draws) {p.penalty}"
        yield line.rstrip()


def labels_needed(points: list[Point], head: str, target: float) -> tuple[int | str | None, float | None]:
    """The smallest k whose mean top-1 reaches ``target`` x the head's k = all top-1, and a log-linear
    interpolation between it and the k before it (None without a k = all point)."""
    mine = [p for p in points if p.head == head]
    full = next((p.mean for p in mine if p.shots == ALL_SHOTS), None)
    if full is None:
        return None, None
    goal = target * full
    for i, p in enumerate(mine):
        if p.mean >= goal:
            if i == 0:
                return p.shots, p.k
            q = mine[i - 1]
            share = (goal - q.mean) / (p.mean - q.mean)
            return p.shots, float(math.exp(math.log(q.k) + share * (math.log(p.k) - math.log(q.k))))
    return None, None


def best_heads(points: list[Point]) -> dict[str, dict]:
    """Per k: the head with the highest mean, its margin over the next, and whether their intervals are apart."""
    out = {}
    for shots in dict.fromkeys(p.shots for p in points):
        ranked = sorted((p for p in points if p.shots == shots), key=lambda p: -p.mean)
        first = ranked[0]
        entry = {"head": first.head, "top1": round(first.mean, 4)}
        if len(ranked) > 1:
            second = ranked[1]
            entry["margin"] = round(first.mean - second.mean, 4)
            entry["apart"] = (first.low is not None and second.high is not None and first.low > second.high)
        out[str(shots)] = entry
    return out


def headline(points: list[Point], targets: list[float]) -> dict:
    """The small summary a user acts on (evaluation/curves.json, read by the report)."""
    heads = list(dict.fromkeys(p.head for p in points))
    full = {h: round(p.mean, 4) for h in heads for p in points if p.head == h and p.shots == ALL_SHOTS}
    needed = {f"{round(100 * t)}%": {h: labels_needed(points, h, t)[0] for h in heads} for t in targets} if full else {}
    return {"full_top1": full, "labels_per_class_for": needed,
            "best_head": {k: v["head"] for k, v in best_heads(points).items()}}


# -- outputs ------------------------------------------------------------------------------------
def _cell(x: float | None, digits: int = 4) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def markdown(points: list[Point], fits: list[Fit], curves: CurvesParams, seed: int) -> str:
    heads = list(dict.fromkeys(p.head for p in points))
    shots = list(dict.fromkeys(p.shots for p in points))
    pct = round(100 * curves.confidence)
    lines = [
        "# Learning curve",
        "",
        f"Test top-1 against labelled training images per class (k), on the pooled feature cache. Each k: "
        f"{curves.draws} stratified draws from the train split (seeded from seed = {seed}, nested across k); k = all "
        f"is one draw, the whole train split, each head with its own params. Every fit is scored on the whole test "
        f"split. Interval: {pct}% t-interval of the mean over the draws. Penalty of {', '.join(PENALISED)} heads: "
        f"{curves.cv_folds}-fold stratified cross-validation inside the k-shot set over l2 in "
        f"[{curves.grid.low:g}, {curves.grid.high:g}] ({curves.grid.num} values) when every class has at least "
        f"{curves.min_shots_for_cv} images, else l2 = {curves.fixed_l2:g}; the validation and test splits are "
        "never used to choose. Protocol: docs/learning-curves.md.",
        "",
        "## Mean test top-1 (best head per k in bold)",
        "",
        "| k | " + " | ".join(heads) + " |",
        "| ---: | " + " | ".join("---:" for _ in heads) + " |",
    ]
    best = best_heads(points)
    for k in shots:
        row = {p.head: p for p in points if p.shots == k}
        cells = []
        for h in heads:
            text = _cell(row[h].mean) if h in row else ""
            cells.append(f"**{text}**" if h in row and best[str(k)]["head"] == h else text)
        label = k if k != ALL_SHOTS else f"all ({row[heads[0]].k:.0f})"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "## Labels per class to reach a share of the k = all top-1", "",
              "Smallest k of the curve whose mean reaches the share; in brackets, a log-linear interpolation "
              "between that k and the one before.", "",
              "| head | top-1 at k = all | " + " | ".join(f"{round(100 * t)}%" for t in curves.targets) + " |",
              "| --- | ---: | " + " | ".join("---:" for _ in curves.targets) + " |"]
    for h in heads:
        full = next((p.mean for p in points if p.head == h and p.shots == ALL_SHOTS), None)
        cells = []
        for t in curves.targets:
            k, estimate = labels_needed(points, h, t)
            cells.append("" if k is None else f"{k} (~{estimate:.0f})" if k != ALL_SHOTS else f"all (~{estimate:.0f})")
        lines.append(f"| {h} | {_cell(full)} | " + " | ".join(cells) + " |")
    lines += ["", "## Best head per k", "", "| k | best | mean top-1 | margin over the next | intervals apart |",
              "| ---: | --- | ---: | ---: | --- |"]
    for k, b in best.items():
        lines.append(f"| {k} | {b['head']} | {b['top1']:.4f} | {_cell(b.get('margin'))} | "
                     f"{'yes' if b.get('apart') else 'no'} |")
    lines += ["", "## Every point", "",
              f"| head | k | draws | train images | mean | std | {pct}% interval | penalty (how chosen) |",
              "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for p in points:
        interval = f"[{p.low:.4f}, {p.high:.4f}]" if p.low is not None else ""
        lines.append(f"| {p.head} | {p.shots} | {p.n_draws} | {p.n_train:.0f} | {p.mean:.4f} | {_cell(p.std)} | "
                     f"{interval} | {p.penalty} |")
    lines += ["", "Penalty: l2 of mean cross-entropy + l2/2 ||W||^2 (C = 1 / (l2 N) for scikit-learn); CV: chosen "
              "by cross-validation inside the k-shot set; fixed: curves.fixed_l2 (too few images per class for "
              "cross-validation); configured: the head's own params. Every fit: evaluation/curve_draws.csv.", ""]
    return "\n".join(lines)


def plot(points: list[Point], path: str | Path, title: str) -> None:
    """Mean test top-1 against k (log scale), one line per head, the interval over the draws as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for head in dict.fromkeys(p.head for p in points):
        mine = [p for p in points if p.head == head]
        k = [p.k for p in mine]
        line, = ax.plot(k, [p.mean for p in mine], marker="o", markersize=3.5, label=head)
        banded = [p for p in mine if p.low is not None]
        if banded:
            ax.fill_between([p.k for p in banded], [p.low for p in banded], [p.high for p in banded],
                            color=line.get_color(), alpha=0.2, linewidth=0)
    ticks = list(dict.fromkeys((p.k, p.shots) for p in points))
    ax.set_xscale("log", base=2)
    labels = [f"all\n({k:.0f})" if s == ALL_SHOTS else str(s) for k, s in ticks]
    ax.set_xticks([k for k, _ in ticks], labels, fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("labelled training images per class (k)")
    ax.set_ylabel("test top-1")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_outputs(fits: list[Fit], points: list[Point], curves: CurvesParams, seed: int, stem: str | Path,
                  draws_path: str | Path, title: str) -> dict:
    """<stem>.md, .png, .json (headline), .csv (one row per head and k: mean top-1 and its interval, the
    DVC plot) and the every-fit table ``draws_path``."""
    stem = Path(stem)
    summary = headline(points, curves.targets)
    with atomic_path(stem.with_suffix(".csv")) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["head", "k", "shots", "top1", "low", "high"])
        writer.writerows([p.head, round(p.k, 2), p.shots, _cell(p.mean), _cell(p.low), _cell(p.high)] for p in points)
    with atomic_path(draws_path) as tmp, open(tmp, "w", newline="") as f:
        names = list(asdict(fits[0])) if fits else []
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in asdict(fit).items()} for fit in fits)
    with atomic_path(stem.with_suffix(".md")) as tmp:
        tmp.write_text(markdown(points, fits, curves, seed))
    plot(points, stem.with_suffix(".png"), title)
    write_json(stem.with_suffix(".json"), summary)
    return summary


def read_points(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
