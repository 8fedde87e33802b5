"""Heads whose scores are linear in the features: logistic regression, a torch linear layer, ridge,
nearest centroid. Each exports as one ``nn.Linear`` after its normalisation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

from pipeline.config import LinearParams, LogisticParams, NearestCentroidParams, RidgeParams
from pipeline.device import torch_device
from pipeline.errors import ConfigError
from pipeline.features import fits_in_memory
from pipeline.heads.base import PooledHead

if TYPE_CHECKING:
    from pipeline.features import FeatureStore


class LinearModelHead(PooledHead):
    """A head whose scores are ``X @ coef.T + intercept``."""

    coef: np.ndarray
    intercept: np.ndarray

    def _scores(self, X: np.ndarray) -> np.ndarray:
        return X @ self.coef.T + self.intercept

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


class SweptLinearHead(LinearModelHead):
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


class LinearHead(SweptLinearHead):
    """A linear layer trained with cross-entropy by full-batch L-BFGS in torch (deterministic)."""

    kind = "linear"
    Params = LinearParams

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        l2 = self.info.get("chosen_l2", self.params.weight_decay)
        self.info["weight_decay"] = l2
        self.coef, self.intercept = softmax_regression((X, y), self.n_classes, l2, self.params.max_iter)

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


class RidgeHead(LinearModelHead):
    """Least squares on one-hot targets, closed form (the squared loss of the classic write-up)."""

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


class NearestCentroidHead(LinearModelHead):
    """Cosine similarity to each class's mean feature (a linear head with no fitting at all)."""

    kind = "nearest_centroid"
    Params = NearestCentroidParams

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        centroids = np.stack([X[y == c].mean(axis=0) if (y == c).any() else np.zeros(X.shape[1]) for c in range(self.n_classes)])
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        self.coef, self.intercept = centroids.astype(np.float32), np.zeros(self.n_classes, np.float32)
