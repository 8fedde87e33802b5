"""The head g: classifiers trained on what the frozen backbone cached, never on images.

This package module is the registry, :data:`KINDS`: each head kind, its params (pydantic models in
:mod:`pipeline.heads.params`) and the class that implements it. It imports no head implementation, so
that validating params.yaml (:mod:`pipeline.config` imports it) stays cheap and every stage does not
depend on the head code; a head module is imported only when a head of its kind is built, so a
scikit-learn head starts without loading torch, and no pooled head loads the backbone code.

One interface (:class:`~pipeline.heads.base.Head`): ``fit_store(store)`` trains from the feature
store, ``decision_function`` scores features, ``save`` / :func:`~pipeline.heads.base.load_head`
persist, ``to_torch`` exports; :func:`~pipeline.heads.base.fit_and_score` is what train, seeds and the
probe do with a head.

Modules: ``params`` (the params of every kind), ``base`` (interface, normalisation, file format),
``calibration`` (temperature scaling), ``linear`` (logistic, linear, ridge, nearest_centroid), ``knn``,
``mlp``, ``finetune`` (the backbone's top layers on the cut cache), ``epochs`` (the epoch loop),
``shots`` (many small fits, for the learning curve), ``live`` (training curves written with DVCLive).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal

from pipeline.errors import PipelineError
from pipeline.heads.params import (FinetuneParams, HeadParamsBase, KnnParams, LinearParams, LogisticParams, MlpParams,
                                   NearestCentroidParams, RidgeParams)

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
    "finetune": Kind(FinetuneParams, "pipeline.heads.finetune:FinetuneHead"),
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
