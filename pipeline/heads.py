"""The head g: light classifiers fitted on cached features f(x).

Every head has one interface (``fit``, ``decision_function``, ``predict_proba``, ``predict``,
``save``/``load_head``) and its own pydantic ``Params`` (the ``head.<kind>`` section of
``params.yaml``). Adding a head means adding one class decorated with ``@register``.

This module never touches images or the backbone; scikit-learn and torch are imported only by
the heads that use them, so a scikit-learn head starts without loading torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.fileutil import atomic_path

HEADS: dict[str, type[Head]] = {}

Normalize = Literal["none", "standardize", "l2"]


def register(cls: type[Head]) -> type[Head]:
    HEADS[cls.kind] = cls
    return cls


class HeadParamsBase(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    normalize: Normalize = "standardize"
    """Feature normalisation fitted on the training features: none, standardize (zero mean,
    unit variance per dimension) or l2 (each feature vector scaled to unit length)."""


class FeatureNormalizer:
    """Per-dimension standardisation or per-row L2 scaling, fitted on training features."""

    def __init__(self, mode: Normalize):
        self.mode = mode
        self.mean: np.ndarray | None = None
        self.scale: np.ndarray | None = None

    def fit(self, X: np.ndarray) -> FeatureNormalizer:
        if self.mode == "standardize":
            X64 = X.astype(np.float64)
            self.mean = X64.mean(axis=0).astype(np.float32)
            std = X64.std(axis=0)
            self.scale = np.where(std > 1e-12, std, 1.0).astype(np.float32)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if self.mode == "standardize":
            return (X - self.mean) / self.scale
        if self.mode == "l2":
            norm = np.linalg.norm(X, axis=1, keepdims=True)
            return X / np.maximum(norm, 1e-12)
        return X

    def state(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "scale": self.scale} if self.mode == "standardize" else {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        if self.mode == "standardize":
            self.mean, self.scale = state["mean"], state["scale"]


class Head:
    """Base class: normalisation, prediction helpers and persistence shared by every head."""

    kind: ClassVar[str]
    Params: ClassVar[type[HeadParamsBase]]

    def __init__(self, params: HeadParamsBase | None = None, seed: int = 0):
        self.params = params if params is not None else self.Params()
        self.seed = seed
        self.normalizer = FeatureNormalizer(self.params.normalize)
        self.n_classes: int | None = None

    # -- to implement ---------------------------------------------------------------------
    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        raise NotImplementedError

    def _scores(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _state(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _load_state(self, state: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    # -- public interface -------------------------------------------------------------------
    def fit(self, X: np.ndarray, y: np.ndarray, n_classes: int | None = None) -> Head:
        X = np.asarray(X, dtype=np.float32)
        y = np.asarray(y, dtype=np.int64)
        if X.ndim != 2 or len(X) != len(y):
            raise ValueError(f"expected features (N, D) and labels (N,), got {X.shape} and {y.shape}")
        self.n_classes = int(n_classes if n_classes is not None else y.max() + 1)
        self._fit(self.normalizer.fit(X).transform(X), y)
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Class scores (N, n_classes): higher means more likely."""
        if self.n_classes is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted")
        return self._scores(self.normalizer.transform(X))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return softmax(self.decision_function(X))

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.decision_function(X).argmax(axis=1)

    def save(self, path: str | Path, metadata: dict[str, Any] | None = None) -> None:
        """Write the fitted head as a pickle-free ``.npz`` (arrays plus a JSON header)."""
        header = {
            "kind": self.kind,
            "params": self.params.model_dump(),
            "seed": self.seed,
            "n_classes": self.n_classes,
            "metadata": metadata or {},
        }
        arrays = {f"head.{k}": v for k, v in self._state().items()}
        arrays |= {f"norm.{k}": v for k, v in self.normalizer.state().items()}
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, header=np.array(json.dumps(header)), **arrays)


def load_head(path: str | Path) -> tuple[Head, dict[str, Any]]:
    """Load a head saved by :meth:`Head.save`; returns the head and the metadata saved with it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"head file {path} does not exist; run the train stage first")
    with np.load(path, allow_pickle=False) as npz:
        header = json.loads(str(npz["header"]))
        head_state = {k[5:]: npz[k] for k in npz.files if k.startswith("head.")}
        norm_state = {k[5:]: npz[k] for k in npz.files if k.startswith("norm.")}
    cls = HEADS.get(header["kind"])
    if cls is None:
        raise ValueError(f"{path}: unknown head kind {header['kind']!r}; valid choices: {sorted(HEADS)}")
    head = cls(cls.Params.model_validate(header["params"]), seed=header["seed"])
    head.n_classes = header["n_classes"]
    head.normalizer.load_state(norm_state)
    head._load_state(head_state)
    return head, header["metadata"]


def softmax(scores: np.ndarray) -> np.ndarray:
    z = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class LinearModelHead(Head):
    """A head whose scores are ``X @ coef.T + intercept``: exportable as one ``nn.Linear``."""

    coef: np.ndarray
    intercept: np.ndarray

    def _scores(self, X: np.ndarray) -> np.ndarray:
        return X @ self.coef.T + self.intercept

    def _state(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef, "intercept": self.intercept}

    def _load_state(self, state: dict[str, np.ndarray]) -> None:
        self.coef, self.intercept = state["coef"], state["intercept"]


class LogisticParams(HeadParamsBase):
    C: float = Field(1.0, gt=0)
    """Inverse L2 penalty strength, as in scikit-learn."""
    max_iter: int = Field(1000, gt=0)
    tol: float = Field(1e-4, gt=0)


@register
class LogisticHead(LinearModelHead):
    """Multinomial logistic regression (scikit-learn, L-BFGS) on normalised features."""

    kind = "logistic"
    Params = LogisticParams

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(
            C=self.params.C, max_iter=self.params.max_iter, tol=self.params.tol, random_state=self.seed
        )
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


class LinearParams(HeadParamsBase):
    weight_decay: float = Field(1e-4, ge=0)
    """L2 penalty on the weights: loss = mean cross-entropy + weight_decay / 2 * ||W||^2."""
    max_iter: int = Field(300, gt=0)


@register
class LinearHead(LinearModelHead):
    """A torch ``nn.Linear`` trained with cross-entropy by full-batch L-BFGS (deterministic)."""

    kind = "linear"
    Params = LinearParams

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        import torch
        import torch.nn.functional as F

        torch.manual_seed(self.seed)
        features, labels = torch.from_numpy(X), torch.from_numpy(y)
        layer = torch.nn.Linear(X.shape[1], self.n_classes)
        torch.nn.init.zeros_(layer.weight)  # the problem is convex: start at zero, independent of RNG
        torch.nn.init.zeros_(layer.bias)
        opt = torch.optim.LBFGS(
            layer.parameters(), lr=1.0, max_iter=self.params.max_iter, history_size=20,
            tolerance_grad=1e-6, tolerance_change=1e-10, line_search_fn="strong_wolfe",
        )
        wd = self.params.weight_decay

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(layer(features), labels) + 0.5 * wd * layer.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.coef = layer.weight.detach().numpy().copy()
        self.intercept = layer.bias.detach().numpy().copy()


class RidgeParams(HeadParamsBase):
    alpha: float = Field(1.0, ge=0)
    """L2 penalty: minimises ||X W + b - Y||^2 + alpha ||W||^2 with Y the one-hot targets."""


@register
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
