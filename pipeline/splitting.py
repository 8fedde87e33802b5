"""The validation split's rule: which training images are carved out as validation images.

One rule for both sides: the prepare stage applies it to the images a source lists (data side, in
:func:`pipeline.sources.make_splits`); the seeds stage applies it again to the rows the feature cache
holds for train + val, with other seeds (head side, :mod:`pipeline.seeds`).
"""

from __future__ import annotations

import numpy as np


def validation_rows(labels: np.ndarray, n_classes: int, val_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Which rows of ``labels`` are carved out as validation (a boolean mask), stratified: of each class
    with n > 1 images, round(val_fraction * n) at random, at least one and at most n - 1 (a class keeps a
    training image); none of a class with one image; none at all when ``val_fraction`` is 0."""
    labels = np.asarray(labels)
    mask = np.zeros(len(labels), bool)
    if val_fraction <= 0:
        return mask
    for c in range(n_classes):
        rows = rng.permutation(np.flatnonzero(labels == c))
        n = len(rows)
        n_val = min(max(1, round(val_fraction * n)), n - 1) if n > 1 else 0
        mask[rows[:n_val]] = True
    return mask
