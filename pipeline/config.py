"""Typed, validated configuration, loaded from ``params.yaml`` in one place.

Every stage calls :func:`load_params`; a wrong type, an unknown key or a value
outside its valid choices stops there with a message naming the key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError
from pipeline.heads import FINETUNE, HEADS, pooled_heads


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DataParams(_Section):
    source: str = "data/cifar10-jpeg.tar.gz"
    """Image-folder directory, .tar/.tar.gz archive of one, or a CIFAR-10 python-batches directory."""
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    subset_per_class: int | None = Field(None, gt=0)


class BackboneParams(_Section):
    name: str = "efficientnet_lite0"
    weights: str | None = "DEFAULT"
    input_size: int = Field(224, ge=32, le=1024)
    batch_size: int = Field(64, gt=0)
    storage_dtype: Literal["float32", "float16"] = "float32"
    num_workers: int | None = Field(None, ge=0)
    """Image-decoding processes; None: 0 on the CPU (measured fastest on 2 cores), 8 on CUDA."""
    on_bad_image: Literal["error", "skip"] = "error"
    chunk_rows: int = Field(1024, gt=0)
    """Rows committed to disk at a time; an interrupted extraction resumes from the last chunk."""
    compile: bool = False
    """torch.compile the backbone: faster extraction after a one-time compilation (see README)."""
    launcher: str = "python"
    """How dvc.yaml starts extract: ``python``, or ``torchrun --nproc_per_node=N`` (data-parallel)."""
    cut: str | None = None
    """A layer of the backbone: its input activations are cached by extract-cut and the layers from
    it up are fine-tuned by the ``finetune:`` configurations. None: no cut cache."""
    cut_storage_dtype: Literal["float32", "float16"] = "float16"
    cut_max_gib: float = Field(20.0, gt=0)
    """extract-cut refuses to start when the cut cache would be larger than this."""

    @property
    def features_file(self) -> str:
        """Where dvc.yaml puts this configuration's feature file (the same rule as there)."""
        return f"data/features/{self.name}-{self.input_size}px.h5"

    @property
    def cut_file(self) -> str:
        """Where dvc.yaml puts the cut cache (the same rule as there)."""
        return f"data/features/{self.name}-{self.input_size}px-cut-{self.cut}.h5"


class HeadParams(_Section):
    """``kind`` picks a head from the registry; ``head.<kind>`` holds its own params."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)
    kind: str = "logistic"

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in HEADS:
            raise ValueError(f"{kind!r} is not a known head; valid choices: {pooled_heads()}")
        return kind

    @model_validator(mode="after")
    def _known_sections(self) -> HeadParams:
        for name in self.model_extra or {}:
            if name not in pooled_heads() and name != self.kind:
                raise ValueError(f"unknown key head.{name}; valid keys: kind, {', '.join(pooled_heads())}")
        return self

    def params_of(self, kind: str | None = None, where: str = "head") -> BaseModel:
        """The validated params of head ``kind`` (default: the selected kind); ``where`` names
        this section in error messages."""
        kind = kind or self.kind
        raw = (self.model_extra or {}).get(kind) or {}
        try:
            return HEADS[kind].Params.model_validate(raw)
        except ValidationError as err:
            prefix = where if where.startswith(f"{FINETUNE}.") else f"{where}.{kind}"
            raise ConfigError(_format(err, prefix=prefix)) from None


class Params(_Section):
    seed: int = 0
    data: DataParams = DataParams()
    backbone: BackboneParams = BackboneParams()
    head: HeadParams = HeadParams()
    heads: dict[str, HeadParams] = {}
    """Named head configurations compared on the same features (one DVC stage each)."""
    finetune: dict[str, dict | None] = {}
    """Named fine-tune configurations (params of the ``finetune`` head), trained on the cut cache."""

    @model_validator(mode="after")
    def _finetune_on_the_cut(self) -> Params:
        for where, head in [("head", self.head), *((f"heads.{n}", h) for n, h in self.heads.items())]:
            if head.kind == FINETUNE:
                raise ValueError(f"{where}.kind: 'finetune' trains on the cut cache, not on pooled features; "
                                 "configure it under finetune: (and set backbone.cut)")
        if self.finetune and self.backbone.cut is None:
            raise ValueError(f"finetune: {sorted(self.finetune)} need a cut cache: set backbone.cut to a layer of the backbone")
        return self

    def head_config(self, key: str = "head") -> HeadParams:
        """``head``, ``heads.<name>`` or ``finetune.<name>``."""
        if key == "head":
            return self.head
        section, _, name = key.partition(".")
        if section == "heads" and name in self.heads:
            return self.heads[name]
        if section == "finetune" and name in self.finetune:
            return HeadParams.model_validate({"kind": FINETUNE, FINETUNE: self.finetune[name] or {}})
        valid = ["head", *(f"heads.{n}" for n in self.heads), *(f"finetune.{n}" for n in self.finetune)]
        raise ConfigError(f"no head configuration {key!r}; valid: {valid}")


def _format(err: ValidationError, prefix: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join([prefix, *map(str, e["loc"])]).strip(".")
        value = "" if e["type"] in ("missing", "value_error") else f" (got {e.get('input')!r})"
        lines.append(f"params: {key}: {e['msg'].removeprefix('Value error, ')}{value}")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any] | None) -> Params:
    """Validate a params mapping (as read from YAML), including every head section."""
    try:
        params = Params.model_validate(raw or {})
    except ValidationError as err:
        raise ConfigError(_format(err, prefix="")) from None
    for prefix, head in [("head", params.head), *((f"heads.{n}", h) for n, h in params.heads.items())]:
        for kind in {head.kind, *(head.model_extra or {})}:
            head.params_of(kind, where=prefix)
    for name in params.finetune:
        params.head_config(f"finetune.{name}").params_of(where=f"finetune.{name}")
    return params


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; read it as the float everyone means."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"params file {path} does not exist")
    with path.open() as f:
        try:
            raw = yaml.load(f, Loader=_Loader)  # noqa: S506 (a SafeLoader)
        except yaml.YAMLError as err:
            raise ConfigError(f"params file {path} is not valid YAML: {err}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"params file {path} must hold a mapping, got {type(raw).__name__}")
    return parse_params(raw)
