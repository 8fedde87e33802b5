"""The params of every head kind: pydantic models, cheap to import (no torch, no scikit-learn).

Each kind's model is named by its head class (``Head.Params``) and registered with it in
:data:`pipeline.core.head_registry.KINDS`; :mod:`pipeline.core.config` validates ``params.yaml`` with them. The
defaults are the documented ones: ``python -m tests.params_reference`` writes them, with the docstrings
below, into params.yaml's comments and docs/parameters.md.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    """A section of params.yaml: unknown keys, wrong types and changes after validation are refused; each
    field's docstring is its description (the one source of the parameter reference, which reads them from
    the source: pydantic's ``use_attribute_docstrings`` would cost every stage 0.1 s of import)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


Normalize = Literal["none", "standardize", "l2"]

Precision = Literal["auto", "float32", "bfloat16"]
"""float32, bfloat16 (autocast: matrix products and convolutions in bfloat16), or auto: bfloat16 where
the device computes it natively (a CPU with AVX-512 BF16 or AMX, a GPU with bf16), float32 elsewhere."""


class HeadParamsBase(Section):
    """Params every head kind has; each kind's subclass adds its own."""

    input: ClassVar[Literal["pooled", "cut"]] = "pooled"
    """What the head trains on: pooled features f(x), or the activations at backbone.cut."""
    calibrate: bool = False
    """temperature scaling fitted on val (not with select: sweep); every kind has it

    temperature scaling fitted on the validation split; refused with `select: sweep`"""
    stochastic: ClassVar[bool] = False
    """Whether a fit depends on the seed (random initialisation, shuffling, dropout): the seed stages
    repeat these heads by default. A deterministic fit varies only with the data it is given."""


class PooledHeadParams(HeadParamsBase):
    normalize: Normalize = "standardize"
    """none | standardize | l2

    `none`, `standardize` or `l2`"""


class Grid(Section):
    low: float = Field(1e-6, gt=0)
    """smallest penalty of the sweep"""
    high: float = Field(1e5, gt=0)
    """largest penalty of the sweep"""
    num: int = Field(45, ge=1)
    """number of penalties"""

    def values(self) -> np.ndarray:
        return np.logspace(np.log10(self.low), np.log10(self.high), self.num)


class SweepParams(PooledHeadParams):
    select: Literal["fixed", "sweep"] = "fixed"
    """fixed: use the penalty set here. sweep: choose the L2 penalty on val from grid, refit on train+val

    `fixed`: use the penalty set here (`C` for logistic, `weight_decay` for linear); `sweep`: choose the L2 penalty
    on the validation split from `grid`, then refit on train + val (the linear-probe protocol, see [heads.md](heads.md))"""
    grid: Grid = Grid()
    """L2 penalties l2 (mean CE + l2/2 |W|^2); C = 1/(l2 N)

    the L2 penalties of the sweep, log-spaced; penalty l2 in mean cross-entropy + l2/2 ‖W‖², and C = 1 / (l2 N)"""
    sweep_max_iter: int = Field(30, gt=0)
    """L-BFGS iterations per grid value (warm-started along the path)

    L-BFGS iterations per grid value (each fit warm-started from the previous one)"""

    @model_validator(mode="after")
    def _calibrated_on_held_out_images(self) -> SweepParams:
        if self.calibrate and self.select == "sweep":
            raise ValueError("calibrate: true cannot be combined with select: sweep: a swept head is refit on train "
                             "+ val, so no held-out split is left to fit the temperature on; use select: fixed "
                             "(with the penalty the sweep chose) or calibrate: false")
        return self


class LogisticParams(SweepParams):
    """scikit-learn logistic regression (`LogisticRegression`, L-BFGS, multinomial)."""

    C: float = Field(0.001, gt=0)
    """inverse L2 penalty (scikit-learn); best of 0.001/0.01/0.1 on val here

    inverse L2 penalty as in scikit-learn, used with `select: fixed`"""
    max_iter: int = Field(1000, gt=0)
    """solver iterations of the final fit"""
    tol: float = Field(1e-3, gt=0)
    """1e-4 (scikit-learn's default) costs 11.4 s instead of 6.6 s here for +0.08 points

    solver tolerance; scikit-learn's default, 1e-4, took 11.4 s instead of 6.6 s on the default run for +0.08 points
    of test top-1"""


class LinearParams(SweepParams):
    """A torch `nn.Linear`, cross-entropy, full-batch L-BFGS (on the GPU when there is one)."""

    weight_decay: float = Field(0.01, ge=0)
    """L2 penalty: mean cross-entropy + weight_decay / 2 * ||W||^2

    L2 penalty: loss = mean cross-entropy + weight_decay / 2 ‖W‖², used with `select: fixed`"""
    max_iter: int = Field(300, gt=0)
    """L-BFGS iterations"""


class RidgeParams(PooledHeadParams):
    """Least squares on one-hot targets."""

    alpha: float = Field(10.0, ge=0)
    """L2 penalty of least squares on one-hot targets

    L2 penalty"""


class NearestCentroidParams(PooledHeadParams):
    """Cosine similarity to each class's mean feature."""

    normalize: Normalize = "l2"
    """cosine similarity to each class's mean feature

    `none`, `standardize` or `l2`"""


class KnnParams(PooledHeadParams):
    """k nearest neighbours by cosine similarity, votes weighted by exp(similarity / temperature)."""

    normalize: Normalize = "l2"
    """`none`, `standardize` or `l2`"""
    calibrate: bool = False
    """true is refused: the vote shares are the probabilities (docs/evaluation.md)

    `true` is refused: the vote shares are already the probabilities, and a temperature fitted on their logs
    flattens every prediction (docs/evaluation.md)"""
    k: int = Field(20, gt=0)
    """neighbours by cosine similarity, votes weighted by exp(similarity / temperature)

    number of neighbours"""
    temperature: float = Field(0.07, gt=0)
    """temperature of the vote weights"""

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
    """One hidden layer, ReLU, dropout; AdamW with a cosine schedule."""

    stochastic = True
    hidden: int = Field(1024, gt=0)
    """one hidden layer, ReLU, dropout; AdamW with a cosine schedule

    width of the hidden layer"""
    dropout: float = Field(0.2, ge=0, lt=1)
    """dropout after the hidden layer"""
    epochs: int = Field(20, gt=0)
    """passes over the training features"""
    batch_size: int = Field(256, gt=0)
    """rows per step"""
    lr: float = Field(1e-3, gt=0)
    """initial learning rate, decayed to 0 along a cosine"""
    weight_decay: float = Field(1e-4, ge=0)
    """AdamW weight decay"""


class FinetuneParams(HeadParamsBase):
    """The backbone's layers above ``backbone.cut`` and a new classifier, trained on the cut cache."""

    input = "cut"
    stochastic = True
    epochs: int = Field(4, gt=0)
    """passes over the cut cache"""
    batch_size: int = Field(64, gt=0)
    """cached maps per step"""
    lr_top: float = Field(3e-4, gt=0)
    """pretrained layers above the cut

    AdamW peak learning rate of the pretrained layers above the cut"""
    lr_classifier: float = Field(3e-3, gt=0)
    """the new linear classifier (starts at zero)

    AdamW peak learning rate of the new linear classifier (initialised at zero)"""
    weight_decay: float = Field(0.05, ge=0)
    """AdamW, on weights only

    AdamW weight decay, on weights only (not on biases or normalisation scales)"""
    warmup_epochs: float = Field(0.25, ge=0)
    """linear warm-up, then cosine decay to 0 (schedule: cosine | constant)

    linear warm-up from 0 to the peak learning rates, in epochs"""
    schedule: Literal["cosine", "constant"] = "cosine"
    """after the warm-up: `cosine` (decay to 0) or `constant`"""
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    """label smoothing of the cross-entropy"""
    flip: bool = True
    """mirror training maps left-right at random

    Mirror each training map left-right with probability 1/2: a cheap stand-in for mirroring the image (the map of a
    mirrored image is close to, not equal to, the mirrored map)."""
    tta_flip: bool = True
    """average the scores of each map and its mirror image

    at prediction, average the scores of each map and of its mirror image"""
    batchnorm: Literal["train", "frozen"] = "train"
    """train | frozen (keep ImageNet's running statistics)

    `train`: batch norm layers above the cut train; `frozen`: keep ImageNet's running statistics"""
    depthwise: Literal["train", "frozen"] = "frozen"
    """frozen (keep ImageNet's depthwise kernels: 1.2x to 1.4x faster on a CPU) | train

    `frozen`: the depthwise convolutions above the cut keep their ImageNet kernels (4% of Lite0's trained weights
    above `_blocks.12`, about a quarter of a training step on a CPU); `train`: they train like the other layers. No
    effect on networks without depthwise convolutions (ResNets)"""
    precision: Precision = "auto"
    """of training: auto | float32 | bfloat16 (the dense layers); auto = bfloat16 where native

    the training passes' arithmetic: `float32`, or `bfloat16`: the dense convolutions and linear layers compute in
    bfloat16 (AMX on a CPU, tensor cores on a GPU) while the weights, batch norm, activations and depthwise
    convolutions stay float32; `auto`: bfloat16 where the device has it natively, as for `backbone.precision`
    ([benchmarks.md](benchmarks.md#fine-tuning-speed)). Scores (evaluate, predict, export) are computed in float32.
    The precision used is in the head's metrics (`chosen.precision`)"""
    compile: bool = False
    """torch.compile the trained network (on a CPU: 0.91x to 1.09x, measured)

    train through `torch.compile` of the top and the classifier: the same training up to float rounding, after a
    one-time compilation; on a CPU, 0.91x to 1.09x the eager speed (needs a C++ compiler there, else it trains
    eagerly and says so; [benchmarks.md](benchmarks.md#fine-tuning-speed)). Scores are computed by the eager network"""
