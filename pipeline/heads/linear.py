"""Heads whose scores are linear in the features: logistic regression, a torch linear layer, ridge,
nearest centroid. Each exports as one ``nn.Linear`` after its normalisation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

from pipeline.core.device import torch_device
from pipeline.core.errors import ConfigError
from pipeline.core.head_params import LinearParams, LogisticParams, NearestCentroidParams, RidgeParams, SweepParams
from pipeline.heads.base import FeatureNormalizer, FitRecord, PooledHead
from pipeline.heads.metrics import top1
from pipeline.heads.shots import ShotFit, chooses_penalty, first_best
from pipeline.store.features import fits_in_memory

if TYPE_CHECKING:
    from pipeline.core.config import CurvesParams
    from pipeline.core.head_params import PooledHeadParams
    from pipeline.heads.base import EpochLog
    from pipeline.heads.live import TrainingLog
    from pipeline.heads.shots import ShotSet, TestSplit
    from pipeline.store.features import FeatureStore


class LinearModelHead(PooledHead):
    """A head whose scores are ``X @ coef.T + intercept``."""

    coef: np.ndarray
    intercept: np.ndarray

    def _scores(self, X: np.ndarray) -> np.ndarray:
        return X @ self.coef.T + self.intercept

    def curve_top1(self, test: TestSplit) -> float:
        """Top-1 on the curve's test split with the normalisation folded into the weights: no normalised
        copy of the test split per fit."""
        norm = self.normalizer
        if norm.mode == "standardize":
            coef = self.coef / norm.scale
            return test.accuracy(test.X @ coef.T + (self.intercept - coef @ norm.mean))
        return test.accuracy(test.normalised(norm.mode, norm.transform) @ self.coef.T + self.intercept)

    def _scores_module(self):
        import torch

        layer = torch.nn.Linear(self.coef.shape[1], self.coef.shape[0])
        with torch.no_grad():
            layer.weight.copy_(torch.as_tensor(self.coef, dtype=torch.float32))
            layer.bias.copy_(torch.as_tensor(self.intercept, dtype=torch.float32))
        return layer

    def _model_arrays(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef, "intercept": self.intercept}

    def _load_model_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.coef, self.intercept = arrays["coef"], arrays["intercept"]


Blocks = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]
"""A re-iterable source of (features, labels) blocks: a feature file read in row blocks."""


class SoftmaxRegression:
    """Multinomial logistic regression by full-batch L-BFGS in torch (on the GPU when there is one): the
    one softmax-regression solver of the project (the linear head, its penalty sweep, and the learning
    curve's cross-validation).

    Minimises mean cross-entropy + l2 / 2 ||W||^2 of F independent problems on the same rows at once
    (``folds``: (N, F) booleans, True where a row is in problem f's training rows; default one problem,
    every row): the problems' weights are stacked, so one product of the features with the stacked
    weights serves all of them. ``mean`` and ``scale`` (F, D): each problem's standardisation, folded into
    its weights (W_f / s_f, b_f - (W_f / s_f) m_f): the features stay one shared copy. ``data`` is (X, y)
    in memory or :data:`Blocks` (one problem only), read block by block on every pass so that features
    larger than memory can be used. Starts at zero; each :meth:`fit` continues from the last solution
    (the warm start of a penalty path). Deterministic: no sampling, no RNG.
    """

    def __init__(self, data: tuple[np.ndarray, np.ndarray] | Blocks, n_classes: int, folds: np.ndarray | None = None,
                 mean: np.ndarray | None = None, scale: np.ndarray | None = None):
        import torch

        device = self.device = torch_device()
        if isinstance(data, tuple):
            rows = None if folds is None else torch.as_tensor(folds, dtype=torch.float32, device=device)
            in_memory = [(torch.as_tensor(data[0], device=device), torch.as_tensor(data[1], device=device), rows)]
            self._blocks = lambda: in_memory
        else:
            if folds is not None:
                raise ValueError("folds need the features in memory")
            self._blocks = lambda: ((torch.as_tensor(X, device=device), torch.as_tensor(y, device=device), None)
                                    for X, y in data())
        dim = next(iter(self._blocks()))[0].shape[1]
        problems = 1 if folds is None else folds.shape[1]
        self.W = torch.zeros(problems, n_classes, dim, device=device, requires_grad=True)
        self.b = torch.zeros(problems, n_classes, device=device, requires_grad=True)
        self._mean = None if mean is None else torch.as_tensor(mean, device=device)
        self._inv_scale = None if scale is None else torch.as_tensor(1.0 / scale, device=device)

    def logits(self, X):
        """Scores (N, F, C) of every problem on the raw (un-standardised) rows X, a tensor."""
        import torch

        W, b = self.W, self.b
        if self._inv_scale is not None:  # ((X - m_f) / s_f) W_f^T + b_f
            W = W * self._inv_scale[:, None, :]
            b = b - (W * self._mean[:, None, :]).sum(dim=2)
        return torch.addmm(b.reshape(-1), X, W.reshape(-1, X.shape[1]).T).view(len(X), *b.shape)

    def fit(self, l2: float, max_iter: int) -> SoftmaxRegression:
        """At most ``max_iter`` L-BFGS iterations at penalty ``l2``, from the current solution."""
        import torch
        import torch.nn.functional as F

        # stop when the float32 loss stops changing at its own resolution (about 1e-7)
        opt = torch.optim.LBFGS([self.W, self.b], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-5,
                                tolerance_change=1e-7, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            totals = torch.zeros(len(self.b), dtype=torch.float64, device=self.device)
            counts = torch.zeros_like(totals)
            for X, y, rows in self._blocks():  # gradients of the summed losses accumulate block by block
                logits = self.logits(X)
                nll = F.cross_entropy(logits.transpose(1, 2), y[:, None].expand(len(y), logits.shape[1]), reduction="none")
                summed = (nll if rows is None else nll * rows).sum(dim=0)  # (F,): each problem's own rows
                summed.sum().backward()
                totals += summed.detach()
                counts += len(y) if rows is None else rows.sum(dim=0)
            with torch.no_grad():
                self.W.grad /= counts[:, None, None].float()
                self.b.grad /= counts[:, None].float()
                self.W.grad += l2 * self.W
                return (totals / counts).sum() + 0.5 * l2 * self.W.pow(2).sum().double()

        opt.step(closure)
        return self

    def solution(self) -> tuple[np.ndarray, np.ndarray]:
        """(W (C, D), b (C,)) of the single problem, float32, on the features as given."""
        return self.W[0].detach().cpu().numpy(), self.b[0].detach().cpu().numpy()

    def path(self, grid: np.ndarray, max_iter: int, held_out_top1: Callable[[], float]) -> list[float]:
        """The warm-started penalty path: fit at each l2 of ``grid`` in turn (strongest first), each from
        the previous solution, and the held-out top-1 after each."""
        accuracies = []
        for l2 in grid:
            self.fit(float(l2), max_iter)
            accuracies.append(held_out_top1())
        return accuracies


def c_from_l2(l2: float, n_rows: int, n_classes: int) -> float:
    """scikit-learn's C for the penalty l2 of mean cross-entropy + l2 / 2 ||W||^2 on ``n_rows`` rows.

    C = 1 / (l2 N); for two classes scikit-learn fits one weight vector w, the softmax weights are
    (-w/2, w/2), whose penalty l2/2 ||W||^2 = l2/4 ||w||^2 matches C = 2 / (l2 N). The map is its own
    inverse: ``c_from_l2(C, N, classes)`` is the l2 of C.
    """
    return (2.0 if n_classes == 2 else 1.0) / (l2 * n_rows)


class PenalisedHead(LinearModelHead):
    """A linear head with an L2 penalty. On the learning curve the penalty is chosen inside each k-shot
    set: the set's held-out top-1 (:meth:`held_out_top1`) at each penalty of ``curves.grid``, strongest
    first, the first maximum kept, when every class has ``curves.min_shots_for_cv`` images; else
    ``curves.fixed_l2``. Then the head is fitted on the whole set with that penalty."""

    @classmethod
    def with_l2(cls, params: PooledHeadParams, l2: float, n_rows: int, n_classes: int) -> PooledHeadParams:
        """``params`` with the penalty l2 (mean loss + l2 / 2 ||W||^2 on ``n_rows`` images), select: fixed."""
        raise NotImplementedError

    @classmethod
    def held_out_top1(cls, X: np.ndarray, y: np.ndarray, n_classes: int, params: PooledHeadParams, grid: np.ndarray,
                      curves: CurvesParams, seed: int) -> list[float]:
        """Top-1 on held-out images of (X, y) alone at each penalty l2 of ``grid``."""
        raise NotImplementedError

    @classmethod
    def selection_rule(cls, curves: CurvesParams) -> str:
        """How :meth:`held_out_top1` holds images out, in words."""
        raise NotImplementedError

    @classmethod
    def curve_fits(cls, params: PooledHeadParams, seed: int, train: tuple[np.ndarray, np.ndarray], n_classes: int,
                   sets: list[ShotSet], test: TestSplit, curves: CurvesParams) -> list[ShotFit]:
        X, y = train
        grid = curves.grid.values()[::-1]  # strongest first: ties go to the stronger penalty
        fits = []
        for s in sets:
            Xk, yk = X[s.rows], y[s.rows]
            fit = ShotFit(float("nan"), l2=curves.fixed_l2, selection="fixed")
            if chooses_penalty(yk, n_classes, curves):
                accuracies = cls.held_out_top1(Xk, yk, n_classes, params, grid, curves, s.seed)
                best = first_best(accuracies)
                fit = ShotFit(float("nan"), l2=float(grid[best]), selection="cv", cv_top1=accuracies[best])
            head = cls(cls.with_l2(params, fit.l2, len(yk), n_classes), seed=seed).fit(Xk, yk, n_classes=n_classes)
            fit.top1, fit.C = head.curve_top1(test), head.penalty(len(yk)).get("C")
            fits.append(fit)
        return fits


class SweptLinearHead(PenalisedHead):
    """Logistic-loss linear heads whose L2 penalty can be chosen on a validation split.

    The sweep walks the grid from the strongest penalty to the weakest, warm-starting each fit from
    the previous solution (torch L-BFGS, on the GPU when there is one); ties go to the stronger
    penalty. The chosen value and the validation curve are kept in :attr:`fitted`.
    """

    @property
    def needs_validation(self) -> bool:
        return self.params.select == "sweep"

    def _select(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray) -> None:
        grid = self.params.grid.values()[::-1]
        problem = SoftmaxRegression((X, y), self.n_classes)

        def val_top1() -> float:
            W, b = problem.solution()
            return top1(X_val @ W.T + b, y_val)

        accuracies = problem.path(grid, self.params.sweep_max_iter, val_top1)
        best = first_best(accuracies)
        self.fitted.sweep = {"l2": grid.tolist(), "val_top1": accuracies}
        self.fitted.chosen_l2 = float(grid[best])
        self.fitted.chosen_val_top1 = accuracies[best]  # held out: the final head is refit on train + val

    @classmethod
    def selection_rule(cls, curves: CurvesParams) -> str:
        return f"{curves.cv_folds}-fold stratified cross-validation"

    @classmethod
    def held_out_top1(cls, X: np.ndarray, y: np.ndarray, n_classes: int, params: SweepParams, grid: np.ndarray,
                      curves: CurvesParams, seed: int) -> list[float]:
        """Stratified ``curves.cv_folds``-fold cross-validation (folds seeded from ``seed``), the
        normalisation refitted on each fold's training part; the held-out predictions of every fold pooled.

        Every fold's model is fitted at once: the folds' weights W_f (in each fold's own normalisation)
        are stacked, so one product of the features with the stacked weights serves every fold; the
        objective is the sum of the folds' objectives (mean cross-entropy over the fold's training rows +
        l2 / 2 ||W_f||^2), which are independent. Full-batch L-BFGS, ``curves.cv_max_iter`` iterations per
        penalty, each warm-started from the previous solution.
        """
        import torch
        from sklearn.model_selection import StratifiedKFold

        X = FeatureNormalizer("l2").transform(X) if params.normalize == "l2" else np.asarray(X, dtype=np.float32)
        training = np.ones((len(y), curves.cv_folds), bool)
        for f, (_, held) in enumerate(StratifiedKFold(curves.cv_folds, shuffle=True, random_state=seed).split(X, y)):
            training[held, f] = False
        mean = scale = None
        if params.normalize == "standardize":  # each fold's own, fitted on its training rows
            norms = [FeatureNormalizer("standardize").fit(X[training[:, f]]) for f in range(curves.cv_folds)]
            mean, scale = np.stack([m.mean for m in norms]), np.stack([m.scale for m in norms])
        problem = SoftmaxRegression((X, y), n_classes, folds=training, mean=mean, scale=scale)
        features, labels = torch.as_tensor(X, device=problem.device), torch.as_tensor(y, device=problem.device)
        held_out = torch.as_tensor(~training, device=problem.device)

        def pooled_top1() -> float:  # the held-out rows of every fold, each predicted by its own fold's fit
            with torch.no_grad():
                return float(((problem.logits(features).argmax(dim=2) == labels[:, None]) & held_out).sum()) / len(y)

        return problem.path(grid, curves.cv_max_iter, pooled_top1)


class LogisticHead(SweptLinearHead):
    """Multinomial logistic regression (scikit-learn, L-BFGS) on normalised features."""

    kind = "logistic"
    Params = LogisticParams

    def _fit(self, X: np.ndarray, y: np.ndarray, log: EpochLog | None = None) -> None:
        from sklearn.linear_model import LogisticRegression

        chosen = self.fitted.chosen_l2
        C = self.params.C if chosen is None else c_from_l2(chosen, len(y), self.n_classes)
        self.fitted.C = C
        model = LogisticRegression(C=C, max_iter=self.params.max_iter, tol=self.params.tol, random_state=self.seed)
        model.fit(X, y)
        coef = np.zeros((self.n_classes, X.shape[1]), np.float32)
        intercept = np.full(self.n_classes, -np.inf, np.float32)
        if len(model.classes_) == 2:  # scikit-learn keeps one row for two classes
            coef[model.classes_] = np.stack([-model.coef_[0], model.coef_[0]]) / 2
            intercept[model.classes_] = np.array([-model.intercept_[0], model.intercept_[0]]) / 2
        else:
            coef[model.classes_] = model.coef_
            intercept[model.classes_] = model.intercept_
        self.coef, self.intercept = coef, intercept

    @classmethod
    def with_l2(cls, params: LogisticParams, l2: float, n_rows: int, n_classes: int) -> LogisticParams:
        return params.model_copy(update={"C": c_from_l2(l2, n_rows, n_classes), "select": "fixed"})

    def penalty(self, n_rows: int) -> dict[str, float]:
        return {"l2": c_from_l2(self.fitted.C, n_rows, self.n_classes), "C": self.fitted.C}


class LinearHead(SweptLinearHead):
    """A linear layer trained with cross-entropy by full-batch L-BFGS in torch (deterministic)."""

    kind = "linear"
    Params = LinearParams

    def _fit(self, X: np.ndarray, y: np.ndarray, log: EpochLog | None = None) -> None:
        l2 = self.fitted.chosen_l2 if self.fitted.chosen_l2 is not None else self.params.weight_decay
        self.fitted.weight_decay = l2
        self.coef, self.intercept = SoftmaxRegression((X, y), self.n_classes).fit(l2, self.params.max_iter).solution()

    @classmethod
    def with_l2(cls, params: LinearParams, l2: float, n_rows: int, n_classes: int) -> LinearParams:
        return params.model_copy(update={"weight_decay": l2, "select": "fixed"})

    def penalty(self, n_rows: int) -> dict[str, float]:
        return {"l2": self.fitted.weight_decay}

    def fit_store(self, store: FeatureStore, log: TrainingLog | None = None) -> LinearHead:
        """In memory when the training features fit; else read block by block on every L-BFGS pass
        (``select: fixed`` only)."""
        if fits_in_memory(store.nbytes("train")):
            return super().fit_store(store, log)
        if self.needs_validation:
            raise ConfigError("head linear with select: sweep needs the features in memory; use select: fixed")
        print(f"train features ({store.nbytes('train') / 2**30:.1f} GiB as float32) exceed the memory budget: "
              "streaming them in blocks")
        blocks = lambda: store.iter_blocks("train")  # noqa: E731
        self.n_classes = len(store.spec.classes)
        self.fitted = FitRecord(weight_decay=self.params.weight_decay, streamed=True)
        self.normalizer.fit_blocks(blocks)
        normalised = lambda: ((self.normalizer.transform(X), y) for X, y in blocks())  # noqa: E731
        self.coef, self.intercept = SoftmaxRegression(normalised, self.n_classes).fit(
            self.params.weight_decay, self.params.max_iter).solution()
        return self


class RidgeHead(PenalisedHead):
    """Least squares on one-hot targets, closed form (the squared loss of the classic write-up).

    Its penalty alpha is, per image, l2 = 2 alpha / N in mean squared error + l2 / 2 ||W||^2: the
    learning curve chooses l2 from the same grid as for the logistic heads, by exact leave-one-out."""

    kind = "ridge"
    Params = RidgeParams

    def _fit(self, X: np.ndarray, y: np.ndarray, log: EpochLog | None = None) -> None:
        # The normal equations with an unpenalised intercept, (Xc^T Xc + alpha I) W = Xc^T Yc on centred
        # features and one-hot targets, the Gram matrix summed in float32 over blocks of rows (centred a block
        # at a time: no copy of X) into float64, solved in float64. Hand-written, not scikit-learn's Ridge,
        # for a head swap's budget of 10 s: on the default run's 45,000 x 1,280 features Ridge took 10.0 s
        # (float64) and this 1.9 s, the same test predictions (coefficients within 2e-6), with other jobs
        # running on the 2-core AMD EPYC; importing scikit-learn alone costs 1.4 s there.
        X = np.asarray(X, dtype=np.float32)
        x_mean = X.mean(axis=0, dtype=np.float64)
        y_mean = np.bincount(y, minlength=self.n_classes) / len(y)
        x_shift, targets = x_mean.astype(np.float32), np.eye(self.n_classes, dtype=np.float32) - y_mean.astype(np.float32)
        gram = np.zeros((X.shape[1], X.shape[1]))
        cross = np.zeros((X.shape[1], self.n_classes))
        rows = 4096  # rows centred into one reused buffer: 0.53 s on 45,000 x 1,280 against 0.59 s at 1,024 rows
        buffer = np.empty((min(rows, len(X)), X.shape[1]), dtype=np.float32)
        for start in range(0, len(X), rows):
            centred = np.subtract(X[start : start + rows], x_shift, out=buffer[: min(rows, len(X) - start)])
            gram += centred.T @ centred
            cross += centred.T @ targets[y[start : start + rows]]
        gram[np.diag_indices_from(gram)] += self.params.alpha
        coef = np.linalg.solve(gram, cross)
        self.coef, self.intercept = coef.T.astype(np.float32), (y_mean - x_mean @ coef).astype(np.float32)

    @classmethod
    def with_l2(cls, params: RidgeParams, l2: float, n_rows: int, n_classes: int) -> RidgeParams:
        return params.model_copy(update={"alpha": l2 * n_rows / 2})

    def penalty(self, n_rows: int) -> dict[str, float]:
        return {"l2": 2 * self.params.alpha / n_rows}

    @classmethod
    def selection_rule(cls, curves: CurvesParams) -> str:
        return "exact leave-one-out"

    @classmethod
    def held_out_top1(cls, X: np.ndarray, y: np.ndarray, n_classes: int, params: RidgeParams, grid: np.ndarray,
                      curves: CurvesParams, seed: int) -> list[float]:
        """Leave-one-out top-1, exact and for every penalty from one eigendecomposition.

        With Z the normalised, centred features (normalisation fitted on the whole set, the one
        approximation: each left-out image still weighs in its moments), the ridge fit with an
        unpenalised intercept is the linear smoother H = 1 1^T / n + Z (Z^T Z + alpha I)^-1 Z^T, and the
        prediction for image i by the fit without it is Y_i - (Y_i - (H Y)_i) / (1 - H_ii). H comes from
        the eigendecomposition of the smaller Gram matrix: Z Z^T = Q diag(lam) Q^T (n <= d) gives
        H - 1 1^T / n = Q diag(lam / (lam + alpha)) Q^T; Z^T Z = V diag(lam) V^T gives (Z V) diag(1 / (lam +
        alpha)) (Z V)^T. (An SVD of Z gives the same, 2 to 4 times slower here.)
        """
        Z = FeatureNormalizer(params.normalize).fit(X).transform(X).astype(np.float64)
        Z -= Z.mean(axis=0)
        n = len(y)
        Y = np.eye(n_classes)[y]
        y_mean = Y.mean(axis=0)
        wide = n <= Z.shape[1]
        lam, vectors = np.linalg.eigh(Z @ Z.T if wide else Z.T @ Z)
        lam = np.maximum(lam, 0.0)
        basis = vectors if wide else Z @ vectors
        projected, squares = basis.T @ (Y - y_mean), np.square(basis)
        accuracies = []
        for l2 in grid:
            alpha = l2 * n / 2
            weight = lam / (lam + alpha) if wide else 1.0 / (lam + alpha)
            fitted = y_mean + basis @ (weight[:, None] * projected)
            leverage = 1.0 / n + squares @ weight
            left_out = Y - (Y - fitted) / np.maximum(1.0 - leverage, 1e-12)[:, None]
            accuracies.append(float((left_out.argmax(axis=1) == y).mean()))
        return accuracies


class NearestCentroidHead(LinearModelHead):
    """Cosine similarity to each class's mean feature (a linear head with no fitting at all)."""

    kind = "nearest_centroid"
    Params = NearestCentroidParams

    def _fit(self, X: np.ndarray, y: np.ndarray, log: EpochLog | None = None) -> None:
        centroids = np.stack([X[y == c].mean(axis=0) if (y == c).any() else np.zeros(X.shape[1]) for c in range(self.n_classes)])
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        self.coef, self.intercept = centroids.astype(np.float32), np.zeros(self.n_classes, np.float32)
