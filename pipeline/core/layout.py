"""Where the pipeline keeps what it writes: every path rule, stated once.

dvc.yaml lists the same paths as the deps and outs of its stages (a test checks that they agree).
The feature files have fixed names: each describes itself in its attributes (see
:class:`~pipeline.store.features.FeatureSpec`), and dvc.lock records the params that made it.
"""

from __future__ import annotations

from pathlib import Path

PROJECT_FILES = ("dvc.yaml", "params.yaml", "pyproject.toml", "pipeline", "data/cifar10-jpeg.tar.gz", "data/checkpoints",
                 ".dvc/config", ".dvc/plots", ".dvcignore", ".gitignore", "plots")
"""What a project needs to run the default pipeline (the tests and benchmarks copy these into a fresh repository)."""
SPLITS = Path("data/prepared/splits.json")
WEIGHTS = Path("data/prepared/weights.json")
"""What backbone.weights is now (a checkpoint's sha256): extraction depends on it."""
CHECKPOINTS = Path("data/checkpoints")
"""Where local checkpoints go (a DVC dep of the weights stages): one replaced in place re-runs its extraction."""
FEATURES = {"pooled": Path("data/features/pooled.h5"), "cut": Path("data/features/cut.h5")}
"""The pooled features f(x), and the cut cache (the activations at backbone.cut)."""
EVALUATION = Path("evaluation")
COMPARISON = EVALUATION / "comparison"
"""Stem of the comparison table (.md), chart (.png) and data (.json: rows, choice on validation, McNemar of
every pair)."""
REPORT = EVALUATION / "report"
"""Stem of the report: report.md (relative links to the pictures), report.html (self-contained) and
report_curve.png and report_reliability.png (the pictures it draws itself)."""
CURVES = EVALUATION / "curves"
"""Stem of the learning curve: table (.md), chart (.png), headline numbers (.json) and the
mean top-1 per k and head (.csv, the DVC plot)."""
CURVES_FINETUNE = EVALUATION / "curves_finetune.json"
"""The fine-tuned top's learning curve (stage curves-finetune): its points, their cost, or why it was skipped."""
CURVE_DRAWS = EVALUATION / "curve_draws.csv"
"""Every fit of the learning curve: one row per head, k and draw, with the penalty chosen and how."""
LEAKAGE = EVALUATION / "leakage"
"""Near-copies between splits: pairs.csv (every candidate pair), summary.json (counts) and
pairs.png (the closest pairs side by side)."""
LEAKAGE_PAIRS = LEAKAGE / "pairs.csv"
LEAKAGE_SUMMARY = LEAKAGE / "summary.json"
LEAKAGE_PICTURE = LEAKAGE / "pairs.png"
SEEDS = EVALUATION / "seeds"
"""Stem of the spread over seeds, written by compare from every seed's fits: per configuration, test top-1
per seed, mean and sd (.json, read by the report) and the table (.md)."""
LIVE = EVALUATION / "live"
"""Training curves written by DVCLive, one folder per head configuration (see :func:`live_dir`)."""


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


def live_dir(key: str) -> Path:
    """The DVCLive folder of configuration ``key``: evaluation/live/head, evaluation/live/heads/<name>,
    evaluation/live/finetune/<name>; it holds metrics.json and plots/metrics/<metric>.tsv."""
    return LIVE / "head" if key == "head" else LIVE / Path(*key.split(".", 1))


LIVE_METRICS = "metrics.json"
LIVE_PLOTS = Path("plots/metrics")
"""Inside a DVCLive folder: the summary (last step) and the per-step plot files."""


def head_name(key: str) -> str:
    """The name a configuration has in the comparison: ``head`` for the main head, else ``<name>``."""
    return key.partition(".")[2] or key


METRICS = "metrics.json"
"""In each evaluation folder, beside test_predictions.csv, ...: every figure of the head (intervals, counts,
per split), read by compare and the report."""
DETAILS = "details.json"
"""In each evaluation folder: per-class accuracy, the confusion matrices and the reliability diagram's statistics
(read by the report), a swept head's validation curve."""
SUMMARY = EVALUATION / "summary"
"""One small file per trained head (its test top-1 and interval, val top-1, ECE). The main head always
writes one, so this folder always exists: compare and mistakes depend on it, not on the optional
heads/ and finetune/ folders."""
TOP1 = EVALUATION / "top1.json"
"""The DVC metric (written by compare): the test top-1 of every trained head, keyed by its name, so that
``dvc metrics show`` is one line and ``dvc exp show`` has one short column per head."""


SEED_FITS = SUMMARY / "seeds"
"""One file per seed of seeds.values (stage seeds@<seed>): that seed's fits, each scored on the test split.
Inside the summary folder, which compare depends on, so that no seed (the default) needs no folder."""


def seed_fits_file(seed: int, folder: Path = SEED_FITS) -> Path:
    return Path(folder) / f"{seed}.json"


def summary_file(key: str) -> Path:
    """The summary of configuration ``key``: evaluation/summary/<name>.json (``head`` for the main head;
    names are unique across heads: and finetune:)."""
    return SUMMARY / f"{head_name(key)}.json"
TEST_PREDICTIONS = "test_predictions.csv"
"""In each evaluation folder: one row per test image: id, actual, predicted, confidence."""

MISTAKES = EVALUATION / "mistakes"
"""The mistakes stage's folder: :data:`MISTAKES_FILES` for the main head and the best head."""
MISTAKE_ROLES = ("main", "best")
"""The heads pictured: the main head, and the best one (highest test top-1, the main head on a tie)."""


def mistakes_files() -> dict[str, Path]:
    """What the mistakes stage writes, by name: ``report`` (mistakes.md), ``data`` (mistakes.json), and per
    role ``<role>_worst`` (the grid of the most confident wrong test predictions, <role>_worst.png) and
    ``<role>_confused`` (each class's most confused class with examples, <role>_confused.png)."""
    files = {"report": MISTAKES / "mistakes.md", "data": MISTAKES / "mistakes.json"}
    for role in MISTAKE_ROLES:
        files[f"{role}_worst"] = MISTAKES / f"{role}_worst.png"
        files[f"{role}_confused"] = MISTAKES / f"{role}_confused.png"
    return files


BACKBONES = EVALUATION / "backbones"
"""The backbone comparison: one folder per compared backbone (:func:`compared_dir`), and, as a stem, beside
it the table (backbones.md), the chart (backbones.png) and the rank agreements (backbones.json)."""
BACKBONES_PLAN = BACKBONES / "plan.json"
"""What is compared (stage plan-backbones): written even when nothing is, so the folder always exists."""


def compared_features(name: str) -> Path:
    """The pooled cache of compared backbone ``name``."""
    return Path("data/features/backbones") / f"{name}.h5"


def compared_weights(name: str) -> Path:
    """What ``backbones.configurations.<name>.weights`` is now (a checkpoint's sha256), as :data:`WEIGHTS`."""
    return Path("data/prepared/weights") / f"{name}.json"


def compared_dir(name: str) -> Path:
    """evaluation/backbones/<name>/: extract.json (what its extraction cost) and probe.json (its heads'
    figures, LogME), read by compare-backbones."""
    return BACKBONES / name


COMPARED_EXTRACTION = "extract.json"
COMPARED_PROBE = "probe.json"
