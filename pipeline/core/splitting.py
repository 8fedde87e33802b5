"""The carving rule: which images are carved out of a pool as validation (or test) images.

One rule for both sides: the prepare stage applies it to the images a source lists (data side, in
:func:`pipeline.data.sources.make_splits`: test from a dataset that gives none, val from train); the seeds
stage applies it again to the rows the feature cache holds for train + val, with other seeds (head side,
:mod:`pipeline.analyses.seeds`).
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


def carve_rows(labels: np.ndarray, n_classes: int, fraction: float, rng: np.random.Generator,
               groups: np.ndarray | None = None) -> np.ndarray:
    """:func:`validation_rows`, or with ``groups`` (a group id per row) the same rule on whole groups: a group
    counts for the class of its first row; of each class with two groups or more, whole groups at random
    until the carved images come closest to ``fraction`` of the class's, at least one group and at most all
    but one. A group is never split: near-identical shots given one group stay on one side."""
    if groups is None:
        return validation_rows(labels, n_classes, fraction, rng)
    labels = np.asarray(labels)
    mask = np.zeros(len(labels), bool)
    if fraction <= 0:
        return mask
    _, first, inverse = np.unique(np.asarray(groups), return_index=True, return_inverse=True)
    sizes, group_class = np.bincount(inverse), labels[first]
    for c in range(n_classes):
        chosen = rng.permutation(np.flatnonzero(group_class == c))
        if len(chosen) < 2:
            continue
        carved = np.cumsum(sizes[chosen])
        n_groups = int(np.clip(np.argmin(np.abs(carved - fraction * carved[-1])) + 1, 1, len(chosen) - 1))
        mask[np.isin(inverse, chosen[:n_groups])] = True
    return mask
