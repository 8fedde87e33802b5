"""The head registry, :data:`KINDS`: each head kind, its params (pydantic models in
:mod:`pipeline.core.head_params`) and the class that implements it (in :mod:`pipeline.heads`, or
:mod:`pipeline.finetune` for the fine-tuned top). It imports no head implementation, so that validating
params.yaml (:mod:`pipeline.core.config` imports it) stays cheap and a stage that trains no head does not
depend on the head code; a head module is imported only when a head of its kind is built, so a
scikit-learn head starts without loading torch, and no pooled head loads the backbone code.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal

from pipeline.core.errors import PipelineError
from pipeline.core.head_params import (
    FinetuneParams,
    HeadParamsBase,
    KnnParams,
    LinearParams,
    LogisticParams,
    MlpParams,
    NearestCentroidParams,
    RidgeParams,
)

__all__ = ["KINDS", "Kind", "HeadConfig", "kinds", "head_class", "build_head"]


@dataclass(frozen=True)
class Kind:
    """A head kind: its params and the class that implements it."""

    params: type[HeadParamsBase]
    implementation: str
    """``module:Class`` of the head, imported only when a head of this kind is built."""


KINDS: dict[str, Kind] = {
    "logistic": Kind(LogisticParams, "pipeline.heads.linear:LogisticHead"),
    "linear": Kind(LinearParams, "pipeline.heads.linear:LinearHead"),
    "ridge": Kind(RidgeParams, "pipeline.heads.linear:RidgeHead"),
    "nearest_centroid": Kind(NearestCentroidParams, "pipeline.heads.linear:NearestCentroidHead"),
    "knn": Kind(KnnParams, "pipeline.heads.knn:KnnHead"),
    "mlp": Kind(MlpParams, "pipeline.heads.mlp:MlpHead"),
    "finetune": Kind(FinetuneParams, "pipeline.finetune.head:FinetuneHead"),
}
"""The head registry: kind -> its params and its implementation."""


def kinds(input: Literal["pooled", "cut"]) -> list[str]:
    """The kinds that train on ``input``: ``pooled`` features (``head``, ``heads``, ``curves.heads``,
    ``backbones.heads``) or the ``cut`` cache (``finetune``)."""
    return sorted(k for k, kind in KINDS.items() if kind.params.input == input)


@dataclass(frozen=True)
class HeadConfig:
    """One head configuration, resolved: its key in params.yaml, its kind and its validated params."""

    key: str
    """``head``, ``heads.<name>``, ``finetune.<name>``, ``curves.heads.<name>`` or ``backbones.heads.<name>``."""
    kind: str
    params: HeadParamsBase


def head_class(kind: str) -> type:
    """The class implementing head ``kind``, a :class:`~pipeline.heads.base.Head` (imported on first use)."""
    if kind not in KINDS:
        raise PipelineError(f"unknown head kind {kind!r}; valid choices: {sorted(KINDS)}")
    module, _, name = KINDS[kind].implementation.partition(":")
    return getattr(importlib.import_module(module), name)


def build_head(config: HeadConfig, seed: int):
    """An unfitted head of a resolved configuration."""
    return head_class(config.kind)(config.params, seed=seed)
