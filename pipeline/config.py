"""Typed, validated configuration, loaded from ``params.yaml`` in one place.

Every stage calls :func:`load_params`; a wrong type, an unknown key or a value outside its valid
choices stops there with a message naming the key. A head is configured by :class:`HeadSection`
wherever it is configured; the params of each head kind live with the heads (:mod:`pipeline.heads.params`,
registered in :data:`pipeline.heads.KINDS`). Each field's docstring is the one description of its key:
``python -m tests.params_reference`` writes them into params.yaml's comments and docs/parameters.md.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError
from pipeline.heads import KINDS, HeadConfig, kinds
from pipeline.heads.params import Grid, HeadParamsBase, Precision, Section

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
    """The head; left out: ``logistic`` (``finetune`` under ``finetune:``)."""

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
    """Its path inside the source; None: no label file (split or class folders)."""
    path_column: str = "path"
    """The image's path, relative to the label file's folder."""
    label_column: str = "label"
    split_column: str | None = None
    """train / val / test per image; None: test (and val) carved."""
    group_column: str | None = None
    """Images of one group (a burst of near-identical shots) are never split between train, val and test."""


class DataParams(Section):
    source: str = "data/cifar10-jpeg.tar.gz"
    """Image-folder directory, .tar/.tar.gz archive of one, or a CIFAR-10 python-batches directory."""
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """Of train, carved as val; not used when the source gives a val split (a val/ folder, a split column)."""
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    """Of each class, carved as test when the source gives no test split (class folders, a label file)."""
    test_seed: int = Field(0, ge=0, lt=SEED_LIMIT)
    """Seeds that carving alone: changing ``seed`` does not change the test set."""
    subset_per_class: int | None = Field(None, gt=0)
    labels: LabelsParams = LabelsParams()
    decode: Literal["reduced", "full"] = "reduced"
    """reduced: JPEGs decoded at the smallest DCT scale (1/2, 1/4, 1/8) whose short side still covers the
    resize, then resized; full: decoded at full size. Recorded in the feature file's preprocessing."""


class BackboneParams(Section):
    name: str = "efficientnet_lite0"
    weights: str | None = "DEFAULT"
    input_size: int | None = Field(224, ge=32, le=1024)
    """Crop size in pixels; None: the backbone's native size (224, 240, 260 for EfficientNet-Lite0/1/2)."""
    batch_size: int = Field(64, gt=0)
    storage_dtype: Literal["float32", "float16"] = "float32"
    num_workers: int | None = Field(None, ge=0)
    """Image-decoding processes; None: 0 on the CPU (measured fastest on 2 cores), 8 on CUDA."""
    on_bad_image: Literal["error", "skip"] = "error"
    commit_rows: int = Field(1024, gt=0)
    """Rows committed to disk at a time; an interrupted extraction resumes from the last commit."""
    compile: bool = False
    """torch.compile the backbone: faster extraction after a one-time compilation."""
    precision: Precision = "auto"
    """Of the extraction's forward pass; the one used is recorded in the feature files."""
    launcher: str = "python"
    """How dvc.yaml starts extract: ``python``, or ``torchrun --nproc_per_node=N`` (data-parallel)."""
    cut: str | None = None
    """A layer of the backbone: its input activations are cached by extract (the cut cache, in the same
    pass as the pooled features) and the layers from it up are fine-tuned by the ``finetune:``
    configurations. None: no cut cache."""
    cut_storage_dtype: Literal["float32", "float16"] = "float16"
    cut_max_gib: float = Field(20.0, gt=0)
    """extract refuses to start when the cut cache would be larger than this."""


# -- learning curves ----------------------------------------------------------------------------
ALL_SHOTS = "all"
"""The k of ``curves.shots`` that stands for every training image (one draw: the whole train split)."""


def _default_curve_heads() -> dict[str, HeadSection]:
    return {kind: HeadSection(kind=kind) for kind in ("logistic", "ridge", "nearest_centroid", "knn")}


class CurvesParams(Section):
    """The learning-curve stage: test top-1 against labelled training images per class (see
    docs/learning-curves.md)."""

    shots: list[int | Literal["all"]] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, ALL_SHOTS]
    """Labelled training images per class, increasing; ``all``: the whole train split (one draw)."""
    draws: int = Field(5, ge=1)
    """Random k-shot sets per k (stratified, nested, seeded from ``seed``)."""
    confidence: float = Field(0.95, gt=0, lt=1)
    """Level of the t-interval over the draws."""
    heads: dict[str, HeadSection] = Field(default_factory=_default_curve_heads)
    cv_folds: int = Field(5, ge=2)
    """Stratified folds of the cross-validation that chooses the L2 penalty inside the k-shot set."""
    min_shots_for_cv: int = Field(5, ge=2)
    """Below this many images per class the penalty is ``fixed_l2`` (no cross-validation)."""
    grid: Grid = Grid(low=1e-3, high=1e2, num=6)
    """The L2 penalties l2 (mean cross-entropy + l2 / 2 ||W||^2) the cross-validation chooses from."""
    cv_max_iter: int = Field(15, gt=0)
    """L-BFGS iterations per grid value in the cross-validation (warm-started along the grid); 30 made the
    same choices on a full-size cache in 1.8 times the time."""
    fixed_l2: float = Field(1.0, gt=0)
    """The L2 penalty below ``min_shots_for_cv`` images per class."""
    targets: list[float] = [0.9, 0.95]
    """Fractions of a head's k = all top-1: the labels per class needed to reach each are reported."""

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
    """The name of a ``finetune:`` configuration; None: the first one. No configuration: the stage is skipped."""
    shots: list[int] = [16, 128, 1024]
    """Labelled training images per class, increasing; the whole split is the configuration's own evaluation.
    The default ks are points of the frozen heads' curve (``curves.shots``): both are compared at the same k."""
    draws: int = Field(1, ge=1)
    """k-shot sets per k: the first ``draws`` draws of the frozen heads' curve (same seed, same images)."""
    min_steps: int = Field(300, gt=0)
    """Optimiser steps at least: below it the epochs are raised (the warm-up keeps its share of them), so that
    a few hundred images get as many updates as a large set gets in its epochs."""

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
    """Names of ``configurations`` to compare, in order; empty: no comparison (the stages do not exist)."""
    heads: dict[str, HeadSection] = Field(default_factory=_default_compared_heads)
    """Heads fitted on each compared cache, as ``heads.<name>``."""
    reference: str = "linear-probe"
    """The head of ``heads`` whose test top-1 the transferability estimates are ranked against."""
    configurations: dict[str, ComparedBackbone] = {}

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
    """The mistakes stage: pictures of the test images the main head and the best head get wrong (see
    docs/evaluation.md)."""

    grid_size: int = Field(24, gt=0)
    """The most confident wrong test predictions shown per head (fewer when there are fewer mistakes)."""
    columns: int = Field(8, gt=0)
    """Images per row of that grid."""
    examples_per_class: int = Field(4, gt=0)
    """For each class, the test images of it taken for its most confused other class, most confident first."""


# -- leakage between splits ------------------------------------------------------------------------
class LeakageParams(Section):
    """The leakage stage: near-copies between splits, candidates found on the pooled features, confirmed by
    aligning their pixels (see docs/leakage.md)."""

    neighbours: int = Field(5, ge=1, le=100)
    """Candidates per query image: its this many nearest images of the other split by cosine similarity of
    the pooled features (rank decides, not one backbone's cosine scale)."""
    min_cosine: float = Field(0.5, ge=-1, lt=1)
    """A permissive floor: a neighbour less similar than this is not a candidate (saves pixel checks only)."""
    pixel_size: int = Field(32, ge=16, le=128)
    """Both images of a candidate are compared in grey at pixel_size x pixel_size pixels (a coarse pass
    at half that)."""
    threshold: float = Field(0.87, gt=0, le=1)
    """A candidate is confirmed when the cosine similarity of the two images' gradient fields, at their
    best alignment (shifts, scales, mirror), is at least this."""
    block_rows: int = Field(4096, gt=0)
    """Rows of the query and base blocks of the similarity search: its memory grows with block_rows, not with the
    number of images (blocks and their product: 4 * block_rows * (2 * D + block_rows) bytes, plus copies made
    while reading). Does not change the results."""


# -- seeds ----------------------------------------------------------------------------------------
class SeedsParams(Section):
    """The seeds stage: head configurations refit with several seeds, their spread over the seeds (see
    docs/seeds.md)."""

    values: list[int] = []
    """The seeds; empty: the stage is off (it writes a placeholder). Each repeated configuration is refit
    once per seed."""
    configurations: list[str] | None = None
    """Which head configurations (``head``, ``heads.<name>``, ``finetune.<name>``) to repeat; None: every
    configuration whose fit varies with the seed (the stochastic heads; every head when ``splits``)."""
    splits: bool = False
    """Each seed also re-carves train / val from the cached train + val rows (the prepare stage's rule, at
    data.val_fraction), so that deterministic heads vary too. A given val split (a ``val/`` folder, a split
    column) is pooled with train and re-carved like the rest."""

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
    data: DataParams = DataParams()
    backbone: BackboneParams = BackboneParams()
    head: HeadSection = HeadSection()
    heads: dict[str, HeadSection] = {}
    """Named head configurations compared on the same features (one DVC stage each)."""
    finetune: dict[str, HeadSection] = {}
    """Named fine-tuned heads (kind ``finetune``), trained on the cut cache."""
    curves: CurvesParams = CurvesParams()
    """The learning curve (stage curves): head side, from the pooled feature file."""
    mistakes: MistakesParams = MistakesParams()
    """The mistakes stage (data side): it reads the test images."""
    leakage: LeakageParams = LeakageParams()
    """Near-copies between splits (stage leakage): data side, from the pooled features and the images."""
    seeds: SeedsParams = SeedsParams()
    """The spread over seeds (stage seeds): head side, from the feature files."""
    backbones: BackbonesParams = BackbonesParams()
    """Other backbones compared with the main one, each in its own pooled cache."""
    curves_finetune: CurvesFinetuneParams = CurvesFinetuneParams()
    """The fine-tuned top's learning curve (stage curves-finetune): head side, from the cut cache."""

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
        """The configurations the seeds stage repeats (``seeds.configurations``, or its default); a
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


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; read it as the float everyone means."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"params file {path} does not exist")
    with path.open() as f:
        try:
            return yaml.load(f, Loader=_Loader)  # noqa: S506 (a SafeLoader)
        except yaml.YAMLError as err:
            raise ConfigError(f"params file {path} is not valid YAML: {err}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    raw = read_yaml(path)
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"params file {path} must hold a mapping, got {type(raw).__name__}")
    return parse_params(raw)
