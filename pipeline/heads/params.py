"""The params of every head kind: pydantic models, cheap to import (no torch, no scikit-learn).

Each kind's model is named by its head class (``Head.Params``) and registered with it in
:data:`pipeline.heads.KINDS`; :mod:`pipeline.config` validates ``params.yaml`` with them. The
defaults are the documented ones: ``python -m tests.params_reference`` writes them, with the docstrings
below, into params.yaml's comments and docs/parameters.md.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    """A section of params.yaml: unknown keys, wrong types and changes after validation are refused; each
    field's docstring is its description (the one source of the parameter reference)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, use_attribute_docstrings=True)


Normalize = Literal["none", "standardize", "l2"]

Precision = Literal["auto", "float32", "bfloat16"]
"""float32, bfloat16 (autocast: matrix products and convolutions in bfloat16), or auto: bfloat16 where
the device computes it natively (a CPU with AVX-512 BF16 or AMX, a GPU with bf16), float32 elsewhere."""


class HeadParamsBase(Section):
    """Params every head kind has; each kind's subclass adds its own."""

    input: ClassVar[Literal["pooled", "cut"]] = "pooled"
    """What the head trains on: pooled features f(x), or the activations at backbone.cut."""
    calibrate: bool = False
    """Temperature scaling: after fitting, the train stage fits one temperature T on the validation split
    (minimising the negative log-likelihood of softmax(scores / T)); probabilities, predict and export use
    it. The predicted classes do not change."""
    stochastic: ClassVar[bool] = False
    """Whether a fit depends on the seed (random initialisation, shuffling, dropout): the seeds stage
    repeats these heads by default. A deterministic fit varies only with the data it is given."""


class PooledHeadParams(HeadParamsBase):
    normalize: Normalize = "standardize"
    """Feature normalisation fitted on the training features: none, standardize (zero mean,
    unit variance per dimension) or l2 (each feature vector scaled to unit length)."""


class Grid(Section):
    low: float = Field(1e-6, gt=0)
    high: float = Field(1e5, gt=0)
    num: int = Field(45, ge=1)

    def values(self) -> np.ndarray:
        return np.logspace(np.log10(self.low), np.log10(self.high), self.num)


class SweepParams(PooledHeadParams):
    select: Literal["fixed", "sweep"] = "fixed"
    """fixed: use the given penalty. sweep: choose the L2 penalty l2 (in mean cross-entropy +
    l2 / 2 ||W||^2) from ``grid`` by validation top-1, then refit on train + val."""
    grid: Grid = Grid()
    sweep_max_iter: int = Field(30, gt=0)
    """L-BFGS iterations per grid value; each value starts from the previous one's solution."""

    @model_validator(mode="after")
    def _calibrated_on_held_out_images(self) -> SweepParams:
        if self.calibrate and self.select == "sweep":
            raise ValueError("calibrate: true cannot be combined with select: sweep: a swept head is refit on train "
                             "+ val, so no held-out split is left to fit the temperature on; use select: fixed "
                             "(with the penalty the sweep chose) or calibrate: false")
        return self


class LogisticParams(SweepParams):
    C: float = Field(0.001, gt=0)
    """Inverse L2 penalty as in scikit-learn (select: fixed); a swept l2 becomes C = 1 / (l2 * N)."""
    max_iter: int = Field(1000, gt=0)
    tol: float = Field(1e-3, gt=0)
    """1e-4 (scikit-learn's default) costs 11.4 s instead of 6.6 s on the default run for +0.08 points."""


class LinearParams(SweepParams):
    weight_decay: float = Field(0.01, ge=0)
    """L2 penalty (select: fixed): loss = mean cross-entropy + weight_decay / 2 * ||W||^2."""
    max_iter: int = Field(300, gt=0)


class RidgeParams(PooledHeadParams):
    alpha: float = Field(10.0, ge=0)
    """L2 penalty: minimises ||X W + b - Y||^2 + alpha ||W||^2 with Y the one-hot targets."""


class NearestCentroidParams(PooledHeadParams):
    normalize: Normalize = "l2"


class KnnParams(PooledHeadParams):
    normalize: Normalize = "l2"
    k: int = Field(20, gt=0)
    temperature: float = Field(0.07, gt=0)
    """Neighbour i votes for its class with weight exp(cosine similarity / temperature)."""

    @model_validator(mode="after")
    def _not_calibrated(self) -> KnnParams:
        if self.calibrate:
            raise ValueError("calibrate: true is refused for knn: its probabilities are already the vote shares, and "
                             "its scores, the log of each class's vote mass, are log(1e-30) = -69 for a class with no "
                             "vote among the k neighbours; the few images whose class got none dominate the validation "
                             "likelihood and the fitted temperature flattens every prediction (on CIFAR-10: T = 11.6, "
                             "test ECE 0.066 -> 0.345)")
        return self


class MlpParams(PooledHeadParams):
    stochastic = True
    hidden: int = Field(1024, gt=0)
    dropout: float = Field(0.2, ge=0, lt=1)
    epochs: int = Field(20, gt=0)
    batch_size: int = Field(256, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)


class FinetuneParams(HeadParamsBase):
    """The backbone's layers above ``backbone.cut`` and a new classifier, trained on the cut cache."""

    input = "cut"
    stochastic = True
    epochs: int = Field(4, gt=0)
    batch_size: int = Field(64, gt=0)
    lr_top: float = Field(3e-4, gt=0)
    """Peak learning rate of the pretrained layers above the cut."""
    lr_classifier: float = Field(3e-3, gt=0)
    """Peak learning rate of the new linear classifier."""
    weight_decay: float = Field(0.05, ge=0)
    """AdamW weight decay, on weight matrices and kernels only (not on biases and norm scales)."""
    warmup_epochs: float = Field(0.25, ge=0)
    """Linear warm-up of both learning rates from 0, then the schedule."""
    schedule: Literal["cosine", "constant"] = "cosine"
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    flip: bool = True
    """Mirror each training map left-right with probability 1/2: a cheap stand-in for mirroring the
    image (the map of a mirrored image is close to, not equal to, the mirrored map)."""
    tta_flip: bool = True
    """Scores are the mean of the scores of the map and of its mirror image."""
    batchnorm: Literal["train", "frozen"] = "train"
    """train: batch norm layers above the cut update their statistics; frozen: keep ImageNet's."""
    depthwise: Literal["train", "frozen"] = "frozen"
    """frozen: depthwise convolutions keep their ImageNet kernels (a few percent of the weights, about a
    quarter of a training step's time on a CPU); train: they are trained like the other layers."""
    precision: Precision = "auto"
    """Of the training passes: bfloat16 computes the dense convolutions and linear layers in bfloat16
    (weights, batch norm and the rest stay float32); scores are computed in float32, as predict and export
    compute them. The one used is recorded in the head's info."""
    compile: bool = False
    """torch.compile the network for training (scores are computed by the eager network), after a
    one-time compilation; on a CPU it needs a C++ compiler and measured 0.91x to 1.09x the eager speed."""
