"""Heads whose scores are linear in the features: logistic regression, a torch linear layer, ridge,
nearest centroid. Each exports as one ``nn.Linear`` after its normalisation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

from pipeline.config import LinearParams, LogisticParams, NearestCentroidParams, RidgeParams, SweepParams
from pipeline.device import torch_device
from pipeline.errors import ConfigError
from pipeline.features import fits_in_memory
from pipeline.heads.base import FeatureNormalizer, PooledHead
from pipeline.heads.shots import ShotFit, chooses_penalty, first_best

if TYPE_CHECKING:
    from pipeline.config import CurvesParams, PooledHeadParams
    from pipeline.features import FeatureStore
    from pipeline.heads.shots import ShotSet, TestSplit


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


def softmax_regression(data: tuple[np.ndarray, np.ndarray] | Blocks, n_classes: int, l2: float, max_iter: int,
                       init: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Train an ``nn.Linear`` to minimise mean cross-entropy + l2 / 2 * ||W||^2 by full-batch
    L-BFGS in torch (on the GPU when there is one).

    ``data`` is either (X, y) in memory or :data:`Blocks`, read block by block on every pass so
    that features larger than memory can be used. Deterministic (zero or given start, no
    sampling). Returns (W (C, D), b (C,)) as float32.
    """
    import torch
    import torch.nn.functional as F

    device = torch_device()
    if isinstance(data, tuple):
        in_memory = [(torch.as_tensor(data[0], device=device), torch.as_tensor(data[1], device=device))]
        blocks = lambda: in_memory  # noqa: E731
    else:
        blocks = lambda: ((torch.as_tensor(X, device=device), torch.as_tensor(y, device=device)) for X, y in data())  # noqa: E731
    dim = next(iter(blocks()))[0].shape[1]
    layer = torch.nn.Linear(dim, n_classes, device=device)
    with torch.no_grad():  # the problem is convex: start at zero (or the given point), no RNG
        layer.weight.copy_(torch.as_tensor(init[0]) if init else torch.zeros_like(layer.weight))
        layer.bias.copy_(torch.as_tensor(init[1]) if init else torch.zeros_like(layer.bias))
    # stop when the float32 loss stops changing at its own resolution (about 1e-7)
    opt = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-5,
                            tolerance_change=1e-7, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        total, rows = 0.0, 0
        for X, y in blocks():  # gradients of the summed loss accumulate block by block
            loss = F.cross_entropy(layer(X), y, reduction="sum")
            loss.backward()
            total, rows = total + loss.item(), rows + len(y)
        with torch.no_grad():
            for p in layer.parameters():
                p.grad /= rows
            layer.weight.grad += l2 * layer.weight
            penalty = 0.5 * l2 * layer.weight.pow(2).sum().item()
        return torch.tensor(total / rows + penalty)

    opt.step(closure)
    return layer.weight.detach().cpu().numpy(), layer.bias.detach().cpu().numpy()


def c_from_l2(l2: float, n_rows: int, n_classes: int) -> float:
    """scikit-learn's C for the penalty l2 of mean cross-entropy + l2 / 2 ||W||^2 on ``n_rows`` rows.

    C = 1 / (l2 N); for two classes scikit-learn fits one weight vector w, the softmax weights are
    (-w/2, w/2), whose penalty l2/2 ||W||^2 = l2/4 ||w||^2 matches C = 2 / (l2 N).
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
    penalty. The chosen value and the validation curve are kept in ``info``.
    """

    @property
    def needs_validation(self) -> bool:
        return self.params.select == "sweep"

    def _select(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray) -> None:
        grid = self.params.grid.values()[::-1]
        solution, accuracies = None, []
        for l2 in grid:
            solution = softmax_regression((X, y), self.n_classes, float(l2), self.params.sweep_max_iter, init=solution)
            W, b = solution
            accuracies.append(float(((X_val @ W.T + b).argmax(axis=1) == y_val).mean()))
        best = int(np.argmax(accuracies))  # first maximum = strongest penalty among ties
        self.info["sweep"] = {"l2": grid.tolist(), "val_top1": accuracies}
        self.info["chosen_l2"] = float(grid[best])
        self.info["chosen_val_top1"] = accuracies[best]  # held out: the final head is refit on train + val

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
        import torch.nn.functional as F
        from sklearn.model_selection import StratifiedKFold

        Xk, yk = np.asarray(X, dtype=np.float32), np.asarray(y, dtype=np.int64)
        n, dim = Xk.shape
        folds = curves.cv_folds
        fold_of = np.empty(n, np.int64)
        for f, (_, held) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(n), yk)):
            fold_of[held] = f
        mean, scale = np.zeros((folds, dim), np.float32), np.ones((folds, dim), np.float32)
        if params.normalize == "l2":
            Xk = FeatureNormalizer("l2").transform(Xk)
        elif params.normalize == "standardize":  # moments of each fold's training part, as FeatureNormalizer fits them
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
        return accuracies


class LogisticHead(SweptLinearHead):
    """Multinomial logistic regression (scikit-learn, L-BFGS) on normalised features."""

    kind = "logistic"
    Params = LogisticParams

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        from sklearn.linear_model import LogisticRegression

        chosen = self.info.get("chosen_l2")
        C = self.params.C if chosen is None else c_from_l2(chosen, len(y), self.n_classes)
        self.info["C"] = C
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
        return {"l2": c_from_l2(self.info["C"], n_rows, self.n_classes), "C": self.info["C"]}


class LinearHead(SweptLinearHead):
    """A linear layer trained with cross-entropy by full-batch L-BFGS in torch (deterministic)."""

    kind = "linear"
    Params = LinearParams

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        l2 = self.info.get("chosen_l2", self.params.weight_decay)
        self.info["weight_decay"] = l2
        self.coef, self.intercept = softmax_regression((X, y), self.n_classes, l2, self.params.max_iter)

    @classmethod
    def with_l2(cls, params: LinearParams, l2: float, n_rows: int, n_classes: int) -> LinearParams:
        return params.model_copy(update={"weight_decay": l2, "select": "fixed"})

    def penalty(self, n_rows: int) -> dict[str, float]:
        return {"l2": self.info["weight_decay"]}

    def fit_store(self, store: FeatureStore) -> LinearHead:
        """In memory when the training features fit; else read block by block on every L-BFGS pass
        (``select: fixed`` only)."""
        if fits_in_memory(store.nbytes("train")):
            return super().fit_store(store)
        if self.needs_validation:
            raise ConfigError("head linear with select: sweep needs the features in memory; use select: fixed")
        print(f"train features ({store.nbytes('train') / 2**30:.1f} GiB as float32) exceed the memory budget: "
              "streaming them in blocks")
        blocks = lambda: store.iter_blocks("train")  # noqa: E731
        self.n_classes, self.info = len(store.spec.classes), {"weight_decay": self.params.weight_decay, "streamed": True}
        self.normalizer.fit_blocks(blocks)
        normalised = lambda: ((self.normalizer.transform(X), y) for X, y in blocks())  # noqa: E731
        self.coef, self.intercept = softmax_regression(normalised, self.n_classes, self.params.weight_decay,
                                                       self.params.max_iter)
        return self


class RidgeHead(PenalisedHead):
    """Least squares on one-hot targets, closed form (the squared loss of the classic write-up).

    Its penalty alpha is, per image, l2 = 2 alpha / N in mean squared error + l2 / 2 ||W||^2: the
    learning curve chooses l2 from the same grid as for the logistic heads, by exact leave-one-out."""

    kind = "ridge"
    Params = RidgeParams

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        X64 = X.astype(np.float64)
        Y = np.eye(self.n_classes)[y]
        x_mean, y_mean = X64.mean(axis=0), Y.mean(axis=0)
        Xc = X64 - x_mean
        gram = Xc.T @ Xc
        gram[np.diag_indices_from(gram)] += self.params.alpha
        W = np.linalg.solve(gram, Xc.T @ (Y - y_mean))
        self.coef = W.T.astype(np.float32)
        self.intercept = (y_mean - x_mean @ W).astype(np.float32)

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

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        centroids = np.stack([X[y == c].mean(axis=0) if (y == c).any() else np.zeros(X.shape[1]) for c in range(self.n_classes)])
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        self.coef, self.intercept = centroids.astype(np.float32), np.zeros(self.n_classes, np.float32)
