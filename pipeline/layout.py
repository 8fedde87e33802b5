"""Where the pipeline keeps what it writes: every path rule, stated once.

dvc.yaml lists the same paths as the deps and outs of its stages (a test checks that they agree).
The feature files have fixed names: each describes itself in its attributes (see
:class:`~pipeline.features.FeatureSpec`), and dvc.lock records the params that made it.
"""

from __future__ import annotations

from pathlib import Path

SPLITS = Path("data/prepared/splits.json")
WEIGHTS = Path("data/prepared/weights.json")
"""What backbone.weights is now (a checkpoint's sha256): extraction depends on it."""
FEATURES = {"pooled": Path("data/features/pooled.h5"), "cut": Path("data/features/cut.h5")}
"""The pooled features f(x), and the cut cache (the activations at backbone.cut)."""
EVALUATION = Path("evaluation")
COMPARISON = EVALUATION / "comparison"
"""Stem of the comparison table (.md) and chart (.png)."""


def head_file(key: str) -> Path:
    """The trained head of configuration ``key``: models/head.npz, models/heads/<name>.npz, models/finetune/<name>.npz."""
    if key == "head":
        return Path("models/head.npz")
    section, _, name = key.partition(".")
    return Path("models") / section / f"{name}.npz"


def evaluation_dir(key: str) -> Path:
    """Metrics and plots of configuration ``key``: evaluation/, evaluation/heads/<name>/, evaluation/finetune/<name>/."""
    if key == "head":
        return EVALUATION
    section, _, name = key.partition(".")
    return EVALUATION / section / name


def head_name(key: str) -> str:
    """The name a configuration has in the comparison: ``head`` for the main head, else ``<name>``."""
    return key.partition(".")[2] or key


METRICS = "metrics.json"
"""In each evaluation folder, beside confusion.png, reliability.png, test_predictions.csv, ..."""
