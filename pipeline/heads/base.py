"""The head interface, feature normalisation and the saved-head format.

Every head is trained by :meth:`Head.fit_store` (from the feature store, the only thing the head side
reads), scores features with :meth:`Head.decision_function`, is saved by :meth:`Head.save` and
exported by :meth:`Head.to_torch`. A head with ``calibrate: true`` is then given a temperature by
:meth:`Head.calibrate` (see :mod:`pipeline.heads.calibration`): its probabilities and its export
divide the scores by it. Pooled heads (:class:`PooledHead`) also take features in memory with
:meth:`PooledHead.fit`, scikit-learn style.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from pipeline.core.errors import ConfigError, PipelineError
from pipeline.core.fileutil import atomic_path
from pipeline.core.head_params import HeadParamsBase, Normalize, PooledHeadParams
from pipeline.core.head_registry import KINDS, head_class
from pipeline.heads.calibration import TEMPERATURE_BOUNDS, fit_temperature, mean_nll, softmax
from pipeline.heads.metrics import top1
from pipeline.heads.shots import ShotFit

if TYPE_CHECKING:
    from torch import nn

    from pipeline.core.config import CurvesParams
    from pipeline.heads.live import TrainingLog
    from pipeline.heads.shots import ShotSet, TestSplit
    from pipeline.store.features import FeatureStore


def split_scores(head: Head, store: FeatureStore, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(scores, labels) of a split of the store, read block by block; None when the split has no rows."""
    blocks = [(head.decision_function(X), y) for X, y in store.iter_blocks(split)] if split in store.splits else []
    if not blocks:
        return None
    return np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])


def split_top1(head: Head, store: FeatureStore, split: str) -> float | None:
    """Top-1 of a fitted head on a split of the store, scored block by block as the evaluate stage scores
    it; None when the split has no rows."""
    scored = split_scores(head, store, split)
    return None if scored is None else top1(*scored)


@dataclass
class FitRecord:
    """What fitting chose or measured, saved with the head (the ``info`` of its file). A kind sets only
    its own fields; the others stay None and are left out of the file and of :attr:`Head.chosen`."""

    sweep: dict[str, list[float]] | None = None
    """A penalty sweep on the validation split: ``l2`` (strongest first) and ``val_top1`` at each."""
    chosen_l2: float | None = None
    """The sweep's choice (the head is then refit on train + val)."""
    chosen_val_top1: float | None = None
    """Validation top-1 at the chosen penalty, measured before the refit."""
    C: float | None = None
    """logistic: scikit-learn's C of the fit."""
    weight_decay: float | None = None
    """linear: the L2 penalty of the fit."""
    streamed: bool | None = None
    """The training features were read block by block (larger than the memory budget)."""
    backbone: dict[str, Any] | None = None
    """finetune: the backbone recipe its top was cut from (rebuilt from it when the head is loaded)."""
    precision: str | None = None
    """finetune: the precision it trained in."""
    train_loss: list[float] | None = None
    """Mean training loss of each epoch."""
    epoch_seconds: list[float] | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class EpochLog:
    """Where a head that trains for epochs reports each epoch: the training log (DVCLive) and the
    features and labels it scores after each epoch (the validation split, normalised as the head's
    inputs), in eval mode: they are never used for fitting."""

    log: TrainingLog
    X: np.ndarray | None = None
    y: np.ndarray | None = None


class Head:
    """Base class of every head: what the stages, predict and export call."""

    kind: ClassVar[str]
    Params: ClassVar[type[HeadParamsBase]]
    logs_epochs: ClassVar[bool] = False
    """True for heads that train for epochs: they log each epoch to the training log given to :meth:`fit_store`."""

    def __init__(self, params: HeadParamsBase | None = None, seed: int = 0):
        self.params = params if params is not None else self.Params()
        self.seed = seed
        self.n_classes: int | None = None
        self.fitted = FitRecord()
        """What fitting chose or measured (chosen penalty, sweep curve, epoch times); saved with the head."""
        self.temperature: float | None = None
        """The calibrated temperature T (set by :meth:`calibrate`): probabilities are softmax(scores / T)."""

    @property
    def input(self) -> str:
        """What the head reads: ``pooled`` features or the ``cut`` cache."""
        return self.Params.input

    @property
    def fitted_on(self) -> tuple[str, ...]:
        """The splits whose images fitting used: no figure is measured on them."""
        return ("train",)

    @property
    def chosen(self) -> dict[str, Any]:
        """What fitting chose (penalty, held-out score at the choice), without curves."""
        return {k: v for k, v in self.fitted.to_json().items() if k != "sweep"}

    def fit_store(self, store: FeatureStore, log: TrainingLog | None = None) -> Head:
        """Fit on the training split of a feature store (the train stage's one call). ``log``: where a head
        that trains for epochs logs its training curves (DVCLive); logging reads the validation split from
        the store and never changes what is learned."""
        raise NotImplementedError

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Class scores (N, n_classes): higher means more likely (logits where the head has them)."""
        raise NotImplementedError

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        """Class probabilities from :meth:`decision_function` scores: softmax(scores / T), T the calibrated
        temperature (1 when the head is not calibrated)."""
        return softmax(scores if self.temperature is None else scores / self.temperature)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.probabilities(self.decision_function(X))

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.decision_function(X).argmax(axis=1)

    def check_calibration(self, store: FeatureStore, name: str = "the head") -> None:
        """Refuse to calibrate on ``store`` when the head is (or will be) fitted on its validation split, or
        when it has none: the train stage asks before fitting, :meth:`calibrate` again after."""
        if "val" in self.fitted_on:
            raise ConfigError(f"{name}: cannot calibrate a head fitted on the validation split ({self.kind} fitted "
                              f"on {' + '.join(self.fitted_on)}): no held-out images are left to fit the "
                              "temperature on")
        if "val" not in store.splits or store.n_rows("val") == 0:
            raise ConfigError(f"{name}: calibrate: true needs a validation split: set data.val_fraction > 0")

    def calibrate(self, store: FeatureStore, name: str = "the head") -> dict[str, float]:
        """Fit the temperature on the validation split of ``store`` (after fitting; the head must not have
        been fitted on it). Returns T and the validation NLL before and after."""
        self.check_calibration(store, name)
        val = split_scores(self, store, "val")
        temperature = fit_temperature(*val, bounds=TEMPERATURE_BOUNDS)
        self.temperature = temperature
        return {"temperature": temperature, "val_nll": mean_nll(*val),
                "val_nll_calibrated": mean_nll(*val, temperature)}

    def to_torch(self) -> nn.Module:
        """The fitted head as a torch module, features -> the scores of :meth:`decision_function`, divided by
        the temperature when the head is calibrated: its softmax is :meth:`predict_proba`."""
        module = self._torch_module()
        if self.temperature is None:
            return module
        import torch

        class Temperature(torch.nn.Module):
            def __init__(self, temperature: float):
                super().__init__()
                self.register_buffer("temperature", torch.tensor(temperature, dtype=torch.float32))

            def forward(self, scores: torch.Tensor) -> torch.Tensor:
                return scores / self.temperature

        return torch.nn.Sequential(module, Temperature(self.temperature)).eval().requires_grad_(False)

    def _torch_module(self) -> nn.Module:
        """The scores of :meth:`decision_function` as a torch module (the head's own layers)."""
        raise PipelineError(
            f"a {self.kind} head cannot be exported as a torch module: it scores by looking up the training "
            "features. Use `python -m pipeline predict`, or export a linear, ridge, nearest_centroid, mlp or "
            "finetune head"
        )

    # -- persistence ---------------------------------------------------------------------------
    def _arrays(self) -> dict[str, np.ndarray]:
        """Every fitted array, by name (saved in the head file)."""
        raise NotImplementedError

    def _load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def save(self, path: str | Path, metadata: dict[str, Any] | None = None) -> None:
        """Write the fitted head as a pickle-free ``.npz`` (arrays plus a JSON header)."""
        if self.n_classes is None:
            raise PipelineError(f"{type(self).__name__} is not fitted")
        header = {"kind": self.kind, "params": self.params.model_dump(), "seed": self.seed,
                  "n_classes": self.n_classes, "info": self.fitted.to_json(), "temperature": self.temperature,
                  "metadata": metadata or {}}
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, header=np.array(json.dumps(header)), **self._arrays())

    @classmethod
    def from_saved(cls, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> Head:
        head = cls(cls.Params.model_validate(header["params"]), seed=header["seed"])
        info = header.get("info", {})
        unknown = sorted(set(info) - set(FitRecord.__dataclass_fields__))
        if unknown:
            raise PipelineError(f"saved {header['kind']} head: unknown fit record keys {unknown}; valid keys: "
                                f"{sorted(FitRecord.__dataclass_fields__)} (saved by another version: train it again)")
        head.n_classes, head.fitted = header["n_classes"], FitRecord(**info)
        head.temperature = header.get("temperature")
        head._load_arrays(arrays)
        return head


@dataclass
class Fitted:
    """A head fitted by :func:`fit_and_score`: how long ``fit_store`` took, and its top-1 per scored split."""

    head: Head
    fit_seconds: float
    top1: dict[str, float]


def fit_and_score(head: Head, store: FeatureStore, splits: tuple[str, ...] = ("test",),
                  scored_on: FeatureStore | None = None, log: TrainingLog | None = None) -> Fitted:
    """Fit ``head`` on ``store`` (``fit_store``, timed; ``log``: its training curves) and score its top-1
    on each of ``splits`` of ``scored_on`` (default: the same store), block by block as the evaluate stage
    scores, leaving out the splits it was fitted on and those without rows. What train, seeds and probe
    do with a head."""
    start = time.perf_counter()
    head.fit_store(store, log)
    seconds = time.perf_counter() - start
    scored = scored_on if scored_on is not None else store
    top1 = {s: split_top1(head, scored, s) for s in splits if s not in head.fitted_on}
    return Fitted(head, seconds, {s: t for s, t in top1.items() if t is not None})


def head_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a saved head (kind, params, info, metadata), without its arrays."""
    return read_saved(path, arrays=False)[0]


def load_head(path: str | Path) -> tuple[Head, dict[str, Any]]:
    """Load a head saved by :meth:`Head.save`; returns the head and the metadata saved with it."""
    header, arrays = read_saved(path)
    if header.get("kind") not in KINDS:
        raise PipelineError(f"{path}: unknown head kind {header.get('kind')!r}; valid choices: {sorted(KINDS)}")
    return head_class(header["kind"]).from_saved(header, arrays), header["metadata"]


def read_saved(path: str | Path, arrays: bool = True) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON header of a saved head and (``arrays``) its arrays."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"head file {path} does not exist; run the train stage first")
    try:
        with np.load(path, allow_pickle=False) as npz:
            header = json.loads(str(npz["header"]))
            return header, ({k: npz[k] for k in npz.files if k != "header"} if arrays else {})
    except (OSError, ValueError, KeyError, EOFError) as err:
        raise PipelineError(f"head file {path} is truncated or not a saved head ({err}); run the train stage again") from None


# -- pooled heads -------------------------------------------------------------------------------
class FeatureNormalizer:
    """Per-dimension standardisation or per-row L2 scaling, fitted on training features."""

    BLOCK_ROWS = 1024
    """Rows converted to float64 at a time while accumulating moments: about 10 MB at 1,280 dimensions, under
    the size above which each allocation is a fresh mapping of the memory (32 MB at most in glibc), whose
    page faults cost as much as the sums here."""

    def __init__(self, mode: Normalize):
        self.mode = mode
        self.mean: np.ndarray | None = None
        self.scale: np.ndarray | None = None

    def fit(self, X: np.ndarray) -> FeatureNormalizer:
        return self.fit_blocks(lambda: [(X, None)])

    def fit_blocks(self, blocks) -> FeatureNormalizer:
        """Fit from a re-iterable of (features, labels) blocks, in one pass (a streamed feature file is read
        once): each run of ``BLOCK_ROWS`` rows's mean and sum of squared deviations in float64, merged into
        the running ones (Chan et al.'s pairwise update; the variance has ddof = 0). scikit-learn's
        ``StandardScaler.partial_fit`` does the same; importing scikit-learn costs 1.4 s of a head swap's
        10-s budget on a 2-core CPU."""
        if self.mode == "standardize":
            n, mean, squares = 0, 0.0, 0.0
            for X, _ in blocks():
                for start in range(0, len(X), self.BLOCK_ROWS):
                    block = np.asarray(X[start : start + self.BLOCK_ROWS], dtype=np.float64)
                    m, block_mean = len(block), block.mean(axis=0)
                    delta = block_mean - mean
                    squares = squares + np.square(block - block_mean).sum(axis=0) + np.square(delta) * n * m / (n + m)
                    n, mean = n + m, mean + delta * m / (n + m)
            std = np.sqrt(squares / n)
            self.mean = np.asarray(mean, dtype=np.float32)
            self.scale = np.where(std > 1e-12, std, 1.0).astype(np.float32)
        return self

    def transform(self, X: np.ndarray, in_place: bool = False) -> np.ndarray:
        """The normalised features, as float32; ``in_place``: written over X (when X is float32)."""
        X = np.asarray(X, dtype=np.float32)
        out = X if in_place else None
        if self.mode == "standardize":  # one new array at most: (X - mean) / scale allocates twice
            out = np.subtract(X, self.mean, out=out, dtype=np.float32)
            out /= self.scale
            return out
        if self.mode == "l2":
            return np.divide(X, np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12), out=out)
        return X

    def arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "scale": self.scale} if self.mode == "standardize" else {}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        if self.mode == "standardize":
            self.mean, self.scale = arrays["mean"], arrays["scale"]

    def to_torch(self) -> nn.Module:
        import torch

        mode, mean, scale = self.mode, self.mean, self.scale

        class Normalize(torch.nn.Module):
            def __init__(self):
                super().__init__()
                if mode == "standardize":
                    self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
                    self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                if mode == "standardize":
                    return (x - self.mean) / self.scale
                if mode == "l2":
                    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
                return x

        return Normalize()


class PooledHead(Head):
    """A head on pooled feature vectors (N, D): normalisation fitted on the training features, then
    the head's own model. Subclasses implement ``_fit``, ``_scores``, ``_model_arrays`` /
    ``_load_model_arrays`` and, when exportable, ``_scores_module``."""

    params: PooledHeadParams

    def __init__(self, params: PooledHeadParams | None = None, seed: int = 0):
        super().__init__(params, seed)
        self.normalizer = FeatureNormalizer(self.params.normalize)

    @property
    def needs_validation(self) -> bool:
        """True when fitting selects a hyper-parameter on the validation split (and then refits on train + val)."""
        return False

    @property
    def fitted_on(self) -> tuple[str, ...]:
        return ("train", "val") if self.needs_validation else ("train",)

    def _fit(self, X: np.ndarray, y: np.ndarray, log: EpochLog | None = None) -> None:
        raise NotImplementedError

    def _select(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray) -> None:
        """Choose hyper-parameters on (normalised) validation features."""

    def _scores(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _scores_module(self) -> nn.Module:
        """The model as torch, normalised features -> scores (not defined: the head is not exportable)."""
        return Head._torch_module(self)

    def _model_arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _load_model_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def fit(self, X: np.ndarray, y: np.ndarray, n_classes: int | None = None,
            validation: tuple[np.ndarray, np.ndarray] | None = None,
            monitor: tuple[np.ndarray, np.ndarray] | None = None, log: TrainingLog | None = None,
            copy: bool = True) -> PooledHead:
        """Fit on (X, y). A head that selects a hyper-parameter does so on ``validation``, then
        refits on train + validation (the linear-probe protocol). A head that trains for epochs logs
        each to ``log``, with its top-1 on ``monitor`` (features and labels; never used for fitting).
        ``copy=False``: X (float32) may be overwritten by its normalised values (scikit-learn's ``copy_X``),
        which spares a copy of the training features."""
        X, y = _check_xy(X, y)
        self.n_classes = int(n_classes if n_classes is not None else y.max() + 1)
        self.fitted, self.temperature = FitRecord(), None
        if self.needs_validation:
            if validation is None or len(validation[1]) == 0:
                raise ConfigError(f"head {self.kind} with select: sweep needs a validation split: set data.val_fraction > 0")
            X_val, y_val = _check_xy(*validation)
            self.normalizer.fit(X)
            self._select(self.normalizer.transform(X), y, self.normalizer.transform(X_val), y_val)
            X, y, copy = np.concatenate([X, X_val]), np.concatenate([y, y_val]), False
        X = self.normalizer.fit(X).transform(X, in_place=not copy)
        epochs = None
        if log is not None and self.logs_epochs:
            epochs = EpochLog(log)
            if monitor is not None and len(monitor[1]):
                X_mon, epochs.y = _check_xy(*monitor)
                epochs.X = self.normalizer.transform(X_mon)
        self._fit(X, y, epochs)
        return self

    # -- many small fits: the learning curve -----------------------------------------------------
    @classmethod
    def curve_fits(cls, params: PooledHeadParams, seed: int, train: tuple[np.ndarray, np.ndarray], n_classes: int,
                   sets: list[ShotSet], test: TestSplit, curves: CurvesParams) -> list[ShotFit]:
        """Fit ``params`` on each training set (rows of ``train``) and score it on ``test``. This default
        fits a head per set with its own params; a kind with a faster way to do it overrides it."""
        X, y = train
        fits = []
        for s in sets:
            head = cls(params, seed=seed).fit(X[s.rows], y[s.rows], n_classes=n_classes)
            fits.append(ShotFit(head.curve_top1(test), **head.penalty(len(s.rows))))
        return fits

    def curve_top1(self, test: TestSplit) -> float:
        """Top-1 of the fitted head on the curve's test split."""
        return test.accuracy(self.decision_function(test.X))

    def penalty(self, n_rows: int) -> dict[str, float | int]:
        """What sets the fitted head's complexity, as the curve reports it (:class:`ShotFit`'s ``l2``,
        ``C``, ``neighbours``), for a fit on ``n_rows`` images; none for a head without one."""
        return {}

    def fit_store(self, store: FeatureStore, log: TrainingLog | None = None) -> PooledHead:
        store.require_input(self.input)
        X, y = store.load("train")
        validation = store.load("val") if self.needs_validation else None
        logging = self.logs_epochs and log is not None and "val" in store.splits
        monitor = store.load("val") if logging else None
        return self.fit(X, y, n_classes=len(store.spec.classes), validation=validation, monitor=monitor, log=log,
                        copy=False)  # X was read for this fit alone

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        if self.n_classes is None:
            raise PipelineError(f"{type(self).__name__} is not fitted")
        return self._scores(self.normalizer.transform(X))

    def _torch_module(self) -> nn.Module:
        import torch

        return torch.nn.Sequential(self.normalizer.to_torch(), self._scores_module()).eval().requires_grad_(False)

    def _arrays(self) -> dict[str, np.ndarray]:
        return {**{f"head.{k}": v for k, v in self._model_arrays().items()},
                **{f"norm.{k}": v for k, v in self.normalizer.arrays().items()}}

    def _load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.normalizer.load_arrays({k[5:]: v for k, v in arrays.items() if k.startswith("norm.")})
        self._load_model_arrays({k[5:]: v for k, v in arrays.items() if k.startswith("head.")})


def _check_xy(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    if X.ndim != 2 or len(X) != len(y):
        raise ValueError(f"expected features (N, D) and labels (N,), got {X.shape} and {y.shape}")
    return X, y
