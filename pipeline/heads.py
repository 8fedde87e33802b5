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
from typing import Any, Callable, ClassVar, Iterable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.errors import ConfigError, PipelineError
from pipeline.fileutil import atomic_path

HEADS: dict[str, type[Head]] = {}
FINETUNE = "finetune"
"""The head kind that trains the backbone's top layers on a cut cache (pipeline.finetune)."""

Normalize = Literal["none", "standardize", "l2"]


def register(cls: type[Head]) -> type[Head]:
    HEADS[cls.kind] = cls
    return cls


def pooled_heads() -> list[str]:
    """The head kinds that fit pooled feature vectors (every kind but finetune), sorted."""
    return sorted(k for k in HEADS if k != FINETUNE)


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
        return self.fit_chunks(lambda: [(X, None)])

    def fit_chunks(self, chunks) -> FeatureNormalizer:
        """Fit from (features, labels) blocks; moments accumulate in float64."""
        if self.mode == "standardize":
            n, total, squares = 0, 0.0, 0.0
            for X, _ in chunks():
                for start in range(0, len(X), 4096):  # float64 copies of a few MB, not of the whole split: 25x faster
                    X64 = X[start : start + 4096].astype(np.float64)
                    n, total, squares = n + len(X64), total + X64.sum(axis=0), squares + np.square(X64).sum(axis=0)
            mean = total / n
            std = np.sqrt(np.maximum(squares / n - mean**2, 0.0))
            self.mean = mean.astype(np.float32)
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
        self.info: dict[str, Any] = {}
        """What fitting chose or measured (chosen penalty, sweep curve); saved with the head."""

    # -- to implement ---------------------------------------------------------------------
    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        raise NotImplementedError

    def _scores(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _state(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _load_state(self, state: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    @property
    def needs_validation(self) -> bool:
        """True when fitting selects a hyper-parameter on a validation split."""
        return False

    @property
    def chosen(self) -> dict[str, Any]:
        """What fitting chose (penalty, held-out score at the choice), without the sweep curve."""
        return {k: v for k, v in self.info.items() if k != "sweep"}

    def _select(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray) -> None:
        """Choose hyper-parameters on (normalised) validation features; see SweepParams."""

    # -- public interface -------------------------------------------------------------------
    def fit(self, X: np.ndarray, y: np.ndarray, n_classes: int | None = None,
            validation: tuple[np.ndarray, np.ndarray] | None = None) -> Head:
        """Fit on (X, y). A head that selects a hyper-parameter does so on ``validation``, then
        refits on train + validation (the linear-probe protocol)."""
        X, y = _check_xy(X, y)
        self.n_classes = int(n_classes if n_classes is not None else y.max() + 1)
        self.info = {}
        if self.needs_validation:
            if validation is None or len(validation[1]) == 0:
                raise ConfigError(f"head {self.kind} with select: sweep needs a validation split: set data.val_fraction > 0")
            X_val, y_val = _check_xy(*validation)
            self.normalizer.fit(X)
            self._select(self.normalizer.transform(X), y, self.normalizer.transform(X_val), y_val)
            X, y = np.concatenate([X, X_val]), np.concatenate([y, y_val])
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
            "info": self.info,
            "metadata": metadata or {},
        }
        arrays = {f"head.{k}": v for k, v in self._state().items()}
        arrays |= {f"norm.{k}": v for k, v in self.normalizer.state().items()}
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, header=np.array(json.dumps(header)), **arrays)


def _check_xy(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    if X.ndim != 2 or len(X) != len(y):
        raise ValueError(f"expected features (N, D) and labels (N,), got {X.shape} and {y.shape}")
    return X, y


def _open_head(path: str | Path):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"head file {path} does not exist; run the train stage first")
    return np.load(path, allow_pickle=False)


def head_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a saved head (kind, params, info, metadata), without its arrays."""
    with _open_head(path) as npz:
        return json.loads(str(npz["header"]))


def load_head(path: str | Path) -> tuple[Head, dict[str, Any]]:
    """Load a head saved by :meth:`Head.save`; returns the head and the metadata saved with it."""
    with _open_head(path) as npz:
        header = json.loads(str(npz["header"]))
        head_state = {k[5:]: npz[k] for k in npz.files if k.startswith("head.")}
        norm_state = {k[5:]: npz[k] for k in npz.files if k.startswith("norm.")}
    cls = HEADS.get(header["kind"])
    if cls is None:
        raise PipelineError(f"{path}: unknown head kind {header['kind']!r}; valid choices: {sorted(HEADS)}")
    head = cls(cls.Params.model_validate(header["params"]), seed=header["seed"])
    head.n_classes = header["n_classes"]
    head.info = header.get("info", {})
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


def torch_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


Chunks = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]
"""A re-iterable source of (features, labels) blocks: a feature file read in row blocks."""


def softmax_regression(data: tuple[np.ndarray, np.ndarray] | Chunks, n_classes: int, l2: float, max_iter: int,
                       init: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Train an ``nn.Linear`` to minimise mean cross-entropy + l2 / 2 * ||W||^2 by full-batch
    L-BFGS in torch (on the GPU when there is one).

    ``data`` is either (X, y) in memory or :data:`Chunks`, read block by block on every pass so
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


class Grid(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    low: float = Field(1e-6, gt=0)
    high: float = Field(1e5, gt=0)
    num: int = Field(45, ge=1)

    def values(self) -> np.ndarray:
        return np.logspace(np.log10(self.low), np.log10(self.high), self.num)


class SweepParams(HeadParamsBase):
    select: Literal["fixed", "sweep"] = "fixed"
    """fixed: use the given penalty. sweep: choose the L2 penalty l2 (in mean cross-entropy +
    l2 / 2 ||W||^2) from ``grid`` by validation top-1, then refit on train + val."""
    grid: Grid = Grid()
    sweep_max_iter: int = Field(30, gt=0)
    """L-BFGS iterations per grid value; each value starts from the previous one's solution."""


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


class LogisticParams(SweepParams):
    C: float = Field(0.001, gt=0)
    """Inverse L2 penalty as in scikit-learn (select: fixed); a swept l2 becomes C = 1 / (l2 * N)."""
    max_iter: int = Field(1000, gt=0)
    tol: float = Field(1e-4, gt=0)


@register
class LogisticHead(SweptLinearHead):
    """Multinomial logistic regression (scikit-learn, L-BFGS) on normalised features."""

    kind = "logistic"
    Params = LogisticParams

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        from sklearn.linear_model import LogisticRegression

        chosen = self.info.get("chosen_l2")
        # scikit-learn fits one weight vector w for two classes; the softmax weights are (-w/2, w/2), whose
        # penalty l2/2 ||W||^2 = l2/4 ||w||^2 matches C = 2 / (l2 N); for more classes C = 1 / (l2 N)
        C = self.params.C if chosen is None else (2.0 if self.n_classes == 2 else 1.0) / (chosen * len(y))
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


class LinearParams(SweepParams):
    weight_decay: float = Field(0.01, ge=0)
    """L2 penalty (select: fixed): loss = mean cross-entropy + weight_decay / 2 * ||W||^2."""
    max_iter: int = Field(300, gt=0)


@register
class LinearHead(SweptLinearHead):
    """A linear layer trained with cross-entropy by full-batch L-BFGS in torch (deterministic)."""

    kind = "linear"
    Params = LinearParams

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        l2 = self.info.get("chosen_l2", self.params.weight_decay)
        self.info["weight_decay"] = l2
        self.coef, self.intercept = softmax_regression((X, y), self.n_classes, l2, self.params.max_iter)

    def fit_chunks(self, chunks: Chunks, n_classes: int) -> LinearHead:
        """Fit from features read block by block (never all in memory); ``select: fixed`` only."""
        if self.needs_validation:
            raise ConfigError("head linear with select: sweep needs the features in memory; use select: fixed")
        self.n_classes, self.info = n_classes, {"weight_decay": self.params.weight_decay, "streamed": True}
        self.normalizer.fit_chunks(chunks)
        normalised = lambda: ((self.normalizer.transform(X), y) for X, y in chunks())  # noqa: E731
        self.coef, self.intercept = softmax_regression(normalised, n_classes, self.params.weight_decay, self.params.max_iter)
        return self


class RidgeParams(HeadParamsBase):
    alpha: float = Field(10.0, ge=0)
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


class NearestCentroidParams(HeadParamsBase):
    normalize: Normalize = "l2"


@register
class NearestCentroidHead(LinearModelHead):
    """Cosine similarity to each class's mean feature (a linear head with no fitting at all)."""

    kind = "nearest_centroid"
    Params = NearestCentroidParams

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        centroids = np.stack([X[y == c].mean(axis=0) if (y == c).any() else np.zeros(X.shape[1]) for c in range(self.n_classes)])
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        self.coef, self.intercept = centroids.astype(np.float32), np.zeros(self.n_classes, np.float32)


class KnnParams(HeadParamsBase):
    normalize: Normalize = "l2"
    k: int = Field(20, gt=0)
    temperature: float = Field(0.07, gt=0)
    """Neighbour i votes for its class with weight exp(cosine similarity / temperature)."""


@register
class KnnHead(Head):
    """k nearest neighbours by cosine similarity on L2-normalised features, weighted votes.

    Stores the training features (float16) in the head file.
    """

    kind = "knn"
    Params = KnnParams

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        self.bank, self.bank_labels = X.astype(np.float16), y.astype(np.int64)

    def _scores(self, X: np.ndarray) -> np.ndarray:
        k = min(self.params.k, len(self.bank_labels))
        bank = self.bank.astype(np.float32)
        scores = np.zeros((len(X), self.n_classes), np.float32)
        for start in range(0, len(X), 1024):
            sims = X[start : start + 1024] @ bank.T
            nearest = np.argpartition(-sims, kth=k - 1, axis=1)[:, :k]
            near_sims = np.take_along_axis(sims, nearest, axis=1)
            # shifting each row by its maximum keeps exp finite and leaves the vote shares unchanged
            weights = np.exp((near_sims - near_sims.max(axis=1, keepdims=True)) / self.params.temperature)
            rows = np.repeat(np.arange(len(nearest)), k)
            np.add.at(scores[start : start + 1024], (rows, self.bank_labels[nearest].ravel()), weights.ravel())
        return np.log(scores + 1e-30)  # log of the vote mass: softmax gives the vote shares

    def _state(self) -> dict[str, np.ndarray]:
        return {"bank": self.bank, "bank_labels": self.bank_labels}

    def _load_state(self, state: dict[str, np.ndarray]) -> None:
        self.bank, self.bank_labels = state["bank"], state["bank_labels"]


class MlpParams(HeadParamsBase):
    hidden: int = Field(1024, gt=0)
    dropout: float = Field(0.2, ge=0, lt=1)
    epochs: int = Field(20, gt=0)
    batch_size: int = Field(256, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)


@register
class MlpHead(Head):
    """One hidden layer (ReLU, dropout), AdamW with a cosine schedule, seeded shuffling and init."""

    kind = "mlp"
    Params = MlpParams

    def _module(self, dim: int):
        import torch

        p = self.params
        return torch.nn.Sequential(
            torch.nn.Linear(dim, p.hidden), torch.nn.ReLU(), torch.nn.Dropout(p.dropout), torch.nn.Linear(p.hidden, self.n_classes)
        )

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        import torch
        import torch.nn.functional as F

        p = self.params
        device = torch_device()
        features, labels = torch.as_tensor(X), torch.as_tensor(y)
        # init, shuffling and dropout are seeded; the caller's RNG state is left as it was
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            net = self._module(X.shape[1]).to(device)
            opt = torch.optim.AdamW(net.parameters(), lr=p.lr, weight_decay=p.weight_decay)
            steps = p.epochs * -(-len(y) // p.batch_size)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
            net.train()
            for _ in range(p.epochs):
                order = torch.randperm(len(y))
                for start in range(0, len(y), p.batch_size):
                    idx = order[start : start + p.batch_size]
                    loss = F.cross_entropy(net(features[idx].to(device)), labels[idx].to(device))
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    schedule.step()
        self.net_state = {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}

    def _scores(self, X: np.ndarray) -> np.ndarray:
        import torch

        net = self._module(X.shape[1])
        net.load_state_dict({k: torch.as_tensor(v) for k, v in self.net_state.items()})
        net.eval()
        with torch.inference_mode():
            return net(torch.as_tensor(X)).numpy()

    def _state(self) -> dict[str, np.ndarray]:
        return self.net_state

    def _load_state(self, state: dict[str, np.ndarray]) -> None:
        self.net_state = dict(state)


from pipeline import finetune  # noqa: E402, F401  (registers the finetune head, defined on top of this module)
