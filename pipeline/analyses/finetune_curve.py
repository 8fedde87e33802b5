"""The fine-tuned top's learning curve: a ``finetune:`` configuration trained on k labelled images per class.

Head side only: it reads the cut cache (never an image; the layers above the cut come from the backbone
side's one narrow function, as for every fine-tuned head). The protocol:

- **Draws.** The k-shot sets are those of the frozen heads' learning curve (:mod:`pipeline.analyses.curves`): draw d
  of k is the first k images of each class in the order that curve draws from (``seed``, d), from the
  train split only, so the fine-tuned top and the frozen heads see the same images at each k.
- **Fits.** The configuration's own params, with enough optimiser steps: below ``min_steps`` the epochs are
  raised to reach it (the warm-up keeps its share of the steps). Only the k-shot rows are trained on,
  through a :class:`~pipeline.store.features.SplitView` of the cut cache with no validation split.
- **Scores.** Each fit is scored on the whole test split, as the evaluate stage scores it.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np

from pipeline.analyses.curves import class_orders, shot_rows
from pipeline.core.config import CurvesFinetuneParams, HeadConfig
from pipeline.core.head_params import FinetuneParams
from pipeline.core.head_registry import build_head
from pipeline.heads.base import split_top1
from pipeline.store.features import FeatureStore, SplitView


def enough_steps(params: FinetuneParams, n_train: int, min_steps: int) -> FinetuneParams:
    """``params`` with the epochs raised so that training takes at least ``min_steps`` optimiser steps on
    ``n_train`` images (the warm-up scaled with them: the same share of the steps)."""
    steps_per_epoch = math.ceil(n_train / params.batch_size)
    epochs = max(params.epochs, math.ceil(min_steps / steps_per_epoch))
    return params.model_copy(update={"epochs": epochs, "warmup_epochs": params.warmup_epochs * epochs / params.epochs})


def k_shot_view(store: FeatureStore, rows: np.ndarray) -> SplitView:
    """The cut cache with ``rows`` of its train split as the training set, the test split as it is, no val."""
    return SplitView(store, {"train": [("train", rows)], "test": [("test", np.arange(store.n_rows("test")))]})


def finetune_curve(store: FeatureStore, config: HeadConfig, settings: CurvesFinetuneParams, seed: int,
                   log: Callable[[str], None] = print) -> list[dict]:
    """One point per k of ``settings.shots`` below the largest class and draw: the configuration fitted on
    that k-shot set and scored on the test split, with its epochs, steps and times."""
    labels = store.labels("train")
    n_classes = len(store.spec.classes)
    largest = int(np.bincount(labels, minlength=n_classes).max()) if len(labels) else 0
    orders = class_orders(labels, n_classes, settings.draws, seed)
    points = []
    for k in settings.shots:
        if k >= largest:
            log(f"k = {k}: every class has at most {largest} training images: that is the whole split (the "
                f"{config.key} evaluation), left out")
            continue
        for d, order in enumerate(orders):
            rows = shot_rows(order, k)
            params = enough_steps(config.params, len(rows), settings.min_steps)
            head = build_head(HeadConfig(config.key, config.kind, params), seed=seed)
            start = time.perf_counter()
            head.fit_store(k_shot_view(store, rows))
            fitted = time.perf_counter()
            top1 = split_top1(head, store, "test")
            scored = time.perf_counter()
            point = {"shots": k, "draw": d, "n_train": len(rows), "epochs": params.epochs,
                     "steps": params.epochs * math.ceil(len(rows) / params.batch_size), "top1": top1,
                     "fit_seconds": round(fitted - start, 2), "score_seconds": round(scored - fitted, 2)}
            log(f"{config.key} k = {k} draw {d}: test top-1 {top1:.4f} ({len(rows)} images, {point['epochs']} epochs, "
                f"{point['steps']} steps, fitted in {point['fit_seconds']:.1f} s, scored in {point['score_seconds']:.1f} s)")
            points.append(point)
    return points
