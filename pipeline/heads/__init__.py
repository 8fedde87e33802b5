"""The head g: classifiers trained on what the frozen backbone cached, never on images.

One interface (:class:`~pipeline.heads.base.Head`): ``fit_store(store)`` trains from the feature
store, ``decision_function`` scores features, ``save`` / :func:`load_head` persist, ``to_torch``
exports. The registry is :data:`pipeline.config.HEAD_PARAMS` (kind -> params -> implementation);
a head module is imported only when a head of its kind is built, so a scikit-learn head starts
without loading torch, and no pooled head loads the backbone code.

Modules: ``base`` (interface, normalisation, file format), ``calibration`` (temperature scaling),
``linear`` (logistic, linear, ridge, nearest_centroid), ``knn``, ``mlp``, ``finetune`` (the backbone's
top layers on the cut cache), ``live`` (training curves written with DVCLive by the train stage).
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import HEAD_PARAMS, HeadConfig
from pipeline.errors import PipelineError
from pipeline.heads.base import Head, read_saved, softmax, split_scores, split_top1

if TYPE_CHECKING:
    from pipeline.heads.live import TrainingLog
    from pipeline.store.features import FeatureStore

__all__ = ["Head", "head_class", "build_head", "fit_and_score", "Fitted", "load_head", "head_header", "softmax",
           "split_scores", "split_top1"]


def head_class(kind: str) -> type[Head]:
    """The class implementing head ``kind`` (imported on first use)."""
    if kind not in HEAD_PARAMS:
        raise PipelineError(f"unknown head kind {kind!r}; valid choices: {sorted(HEAD_PARAMS)}")
    module, _, name = HEAD_PARAMS[kind].implementation.partition(":")
    return getattr(importlib.import_module(module), name)


def build_head(config: HeadConfig, seed: int) -> Head:
    """An unfitted head of a resolved configuration."""
    return head_class(config.kind)(config.params, seed=seed)


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
    if header.get("kind") not in HEAD_PARAMS:
        raise PipelineError(f"{path}: unknown head kind {header.get('kind')!r}; valid choices: {sorted(HEAD_PARAMS)}")
    return head_class(header["kind"]).from_saved(header, arrays), header["metadata"]
