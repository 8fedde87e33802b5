"""The mistakes, in pictures: which test images a head gets wrong, and what it takes them for.

Data side: it reads an evaluate stage's test_predictions.csv (id, actual, predicted, confidence) and the
test images by id, from the source recorded in splits.json. For one head it finds

- the most confident mistakes: the wrong test predictions, highest confidence (the probability the head
  gave its predicted class) first;
- for each class, its most confused other class (the class its test images are most often taken for)
  with a few of those images, most confident first.

:func:`write_report` draws both for the main head and for the best head (highest test top-1) and
writes them, with mistakes.md and mistakes.json, as one set (:func:`pipeline.layout.mistakes_files`).
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline import layout
from pipeline.data.sources import Splits, open_source
from pipeline.errors import PipelineError
from pipeline.fileutil import atomic_files, sha256_json

THUMBNAIL = 128
"""Images are drawn at most this many pixels on a side (CIFAR-10's 32 px as they are)."""


@dataclass(frozen=True)
class Prediction:
    id: str
    actual: str
    predicted: str
    confidence: float

    @property
    def wrong(self) -> bool:
        return self.actual != self.predicted


@dataclass
class Confusion:
    """Class ``actual``'s most confused other class ``predicted`` (None: no test image of it is wrong)."""

    actual: str
    predicted: str | None
    count: int
    """Test images of ``actual`` predicted as ``predicted``."""
    total: int
    """Test images of ``actual``."""
    wrong: int
    """Test images of ``actual`` predicted as any other class."""
    examples: list[Prediction]


@dataclass
class HeadMistakes:
    """One head's mistakes, as the report shows them."""

    role: str
    """``main`` or ``best`` (:data:`pipeline.layout.MISTAKE_ROLES`)."""
    config: str
    name: str
    kind: str
    test_top1: float
    n_test: int
    n_wrong: int
    worst: list[Prediction]
    confusions: list[Confusion]

    def fingerprint(self, *settings) -> str:
        """What this head's pictures are drawn from (its mistakes, ``settings``): equal fingerprints, equal
        pictures, so a head whose predictions did not change is not drawn again."""
        return sha256_json([asdict(self), *settings])


def read_predictions(path: str | Path) -> list[Prediction]:
    """The rows of an evaluate stage's test_predictions.csv."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if "confidence" not in (reader.fieldnames or []):
            raise PipelineError(f"{path} has no confidence column (written by an older evaluate stage): run the "
                                "evaluate stages again (dvc repro)")
        return [Prediction(r["id"], r["actual"], r["predicted"], float(r["confidence"])) for r in reader]


def most_confident_mistakes(predictions: list[Prediction], n: int) -> list[Prediction]:
    """The ``n`` wrong predictions of highest confidence, most confident first (ties: by id)."""
    wrong = [p for p in predictions if p.wrong]
    return sorted(wrong, key=lambda p: (-p.confidence, p.id))[:n]


def confusions(predictions: list[Prediction], classes: list[str], examples: int) -> list[Confusion]:
    """For each class (in ``classes`` order), the other class its test images are most often predicted as
    (ties: the one whose images carry more total confidence, then the first in ``classes``), with up to
    ``examples`` of those images, most confident first."""
    order = {c: i for i, c in enumerate(classes)}
    out = []
    for cls in classes:
        mine = [p for p in predictions if p.actual == cls]
        wrong = [p for p in mine if p.wrong]
        if not wrong:
            out.append(Confusion(cls, None, 0, len(mine), 0, []))
            continue
        counts = Counter(p.predicted for p in wrong)
        weight = Counter()
        for p in wrong:
            weight[p.predicted] += p.confidence
        other = min(counts, key=lambda c: (-counts[c], -weight[c], order.get(c, len(order))))
        chosen = most_confident_mistakes([p for p in wrong if p.predicted == other], examples)
        out.append(Confusion(cls, other, counts[other], len(mine), len(wrong), chosen))
    return out


def best_config(metrics: dict[str, dict]) -> str:
    """The configuration with the highest test top-1; on a tie the first given (the main head first), as in
    the comparison."""
    return max(metrics, key=lambda key: (metrics[key]["test"]["top1"], -list(metrics).index(key)))


def head_mistakes(role: str, config: str, evaluation_dir: str | Path, classes: list[str], worst: int,
                  examples: int) -> HeadMistakes:
    """The mistakes of the head evaluated in ``evaluation_dir`` (its metrics.json and test_predictions.csv)."""
    evaluation_dir = Path(evaluation_dir)
    metrics = json.loads((evaluation_dir / layout.METRICS).read_text())
    predictions = read_predictions(evaluation_dir / layout.TEST_PREDICTIONS)
    unknown = sorted({c for p in predictions for c in (p.actual, p.predicted)} - set(classes))
    if unknown:
        raise PipelineError(f"{evaluation_dir / layout.TEST_PREDICTIONS} names classes that splits.json does not "
                            f"have ({unknown}): run the evaluate stages again (dvc repro)")
    return HeadMistakes(role, config, metrics["name"], metrics["head"], metrics["test"]["top1"], len(predictions),
                        sum(p.wrong for p in predictions), most_confident_mistakes(predictions, worst),
                        confusions(predictions, classes, examples))


# -- images -------------------------------------------------------------------------------------
def load_thumbnails(splits: Splits, ids: set[str], size: int = THUMBNAIL) -> dict[str, np.ndarray]:
    """The test images ``ids`` as uint8 arrays (H, W, 3), at most ``size`` pixels on a side, read from the
    source of ``splits`` in one pass (in the source's order)."""
    from pipeline.data.images import open_rgb

    keys = splits.splits["test"].keys
    missing = sorted(ids - set(keys))
    if missing:
        raise PipelineError(f"test predictions name images that are not in the test split of splits.json "
                            f"({missing[:3]}...): run the evaluate stages again (dvc repro)")
    position = {k: i for i, k in enumerate(keys)}
    out = {}
    for key, raw in open_source(splits.source).stream(sorted(ids, key=position.__getitem__)):
        image = open_rgb(raw, cover=size)  # a large JPEG decodes at the smallest scale that still covers the thumbnail
        image.thumbnail((size, size))
        out[key] = np.asarray(image)
    return out


def plot_worst(mistakes: HeadMistakes, images: dict[str, np.ndarray], columns: int, path: str | Path) -> None:
    """The grid of the most confident mistakes: each image with its true class, the predicted class and the
    confidence."""
    from pipeline.reports.figures import pyplot, save_figure

    plt = pyplot()
    n = len(mistakes.worst)
    cols = max(1, min(columns, n))
    rows = max(1, math.ceil(n / cols))
    width = max(6.0, 1.6 * cols + 0.4)
    fig, axes = plt.subplots(rows, cols, figsize=(width, (width / cols + 0.5) * rows + 0.9), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, p in zip(axes.flat, mistakes.worst):
        ax.imshow(images[p.id])
        ax.set_title(f"{p.actual}\n→ {p.predicted} {p.confidence:.2f}", fontsize=8, color="tab:red")
    if n == 0:
        axes[0, 0].text(0.5, 0.5, "no mistakes", ha="center", va="center", transform=axes[0, 0].transAxes)
    _title(fig, f"{_who(mistakes)}: the {n} most confident of {mistakes.n_wrong} mistakes on {mistakes.n_test} test "
                "images (true class, → predicted class and its probability)", width, panel_title_lines=2)
    save_figure(fig, path)


def plot_confusions(mistakes: HeadMistakes, images: dict[str, np.ndarray], examples: int, path: str | Path) -> None:
    """One row per class: its most confused other class (how many of its test images went there) and the
    most confident of those images."""
    from pipeline.reports.figures import pyplot, save_figure

    plt = pyplot()
    rows = len(mistakes.confusions)
    width = max(6.0, 1.5 * examples + 2.2)
    fig, axes = plt.subplots(rows, examples + 1, figsize=(width, 1.55 * rows + 0.8), squeeze=False,
                             gridspec_kw={"width_ratios": [1.6] + [1] * examples})
    for ax in axes.flat:
        ax.axis("off")
    for row, c in zip(axes, mistakes.confusions):
        if c.predicted is None:
            text = f"{c.actual}\nno mistakes\n({c.total} images)"
        else:
            text = f"{c.actual}\n→ {c.predicted}\n{c.count} of {c.total} ({c.count / c.total:.0%})"
        row[0].text(0.0, 0.5, text, ha="left", va="center", fontsize=9, transform=row[0].transAxes)
        for ax, p in zip(row[1:], c.examples):
            ax.imshow(images[p.id])
            ax.set_title(f"{p.confidence:.2f}", fontsize=8)
    _title(fig, f"{_who(mistakes)}: each class's most confused class (the class its test images are most often "
                "taken for), with the most confident of those images", width)
    save_figure(fig, path)


def _title(fig, text: str, width_inches: float, panel_title_lines: int = 1) -> None:
    """The figure's title, wrapped to its width, above the panels, whose margins are set from the known sizes
    of the texts (``panel_title_lines``: lines of each panel's own title) rather than by ``tight_layout``,
    which draws the whole figure to measure it (about half a second for a grid of 24 images)."""
    import textwrap

    wrapped = textwrap.fill(text, width=int(width_inches * 13))
    height = fig.get_figheight()
    fig.suptitle(wrapped, fontsize=9, y=1 - 0.08 / height, va="top")
    rows = len({ax.get_subplotspec().rowspan.start for ax in fig.axes})
    line = 9 / 72 * 1.25  # a line of 9-point text, in inches
    top = 1 - (0.08 + line * (wrapped.count("\n") + 1) + 0.08 + line * panel_title_lines) / height
    row_height = top * height / rows
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=top,
                        wspace=0.08, hspace=min(0.9, line * panel_title_lines / max(row_height - line * panel_title_lines, 0.1)))


def _who(m: HeadMistakes) -> str:
    return f"{m.name} ({m.kind}, test top-1 {m.test_top1:.4f})"


# -- the report ---------------------------------------------------------------------------------
def report_markdown(heads: list[HeadMistakes], files: dict[str, Path]) -> str:
    """mistakes.md: for each head, the grids and the tables behind them."""
    lines = ["# Mistakes on the test split", ""]
    main, best = heads
    if best.config == main.config:
        lines += [f"The main head is also the best head (highest test top-1): {main.name}.", ""]
    for m in heads:
        if m.role == "best" and m.config == main.config:
            continue
        title = "The main head" if m.role == "main" else "The best head"
        worst_png, confused_png = files[f"{m.role}_worst"].name, files[f"{m.role}_confused"].name
        lines += [f"## {title}: {_who(m)}", "",
                  f"{m.n_wrong} of {m.n_test} test images wrong. The most confident mistakes "
                  "(confidence: the probability the head gave the class it predicted):", "",
                  f"![most confident mistakes]({worst_png})", "",
                  "| # | image | true | predicted | confidence |", "| ---: | --- | --- | --- | ---: |"]
        lines += [f"| {i} | `{p.id}` | {p.actual} | {p.predicted} | {p.confidence:.4f} |"
                  for i, p in enumerate(m.worst, 1)]
        lines += ["", "Each class's most confused class (the class its test images are most often taken for):", "",
                  f"![most confused classes]({confused_png})", "",
                  "| class | most confused with | images | of the class | all its mistakes | examples |",
                  "| --- | --- | ---: | ---: | ---: | --- |"]
        for c in m.confusions:
            share = f"{c.count / c.total:.1%}" if c.total else ""
            examples = ", ".join(f"`{p.id}`" for p in c.examples)
            lines.append(f"| {c.actual} | {c.predicted or '(none)'} | {c.count} | {share} | {c.wrong} | {examples} |")
        lines.append("")
    return "\n".join(lines)


def write_report(heads: list[HeadMistakes], images: dict[str, np.ndarray], columns: int, examples: int,
                 files: dict[str, Path] | None = None, fingerprints: dict[str, str] | None = None,
                 keep: set[str] = frozenset()) -> dict[str, Path]:
    """Write the figures of each head, mistakes.md and mistakes.json, all of them or none (``files``: the
    outputs by name, default :func:`pipeline.layout.mistakes_files`; all in one folder). The roles in
    ``keep`` keep the figures they have (drawn from the same fingerprint); ``fingerprints`` by role are
    recorded in mistakes.json."""
    files = files or layout.mistakes_files()
    fingerprints = fingerprints or {}
    (folder,) = {p.parent for p in files.values()}
    with atomic_files(folder) as staging:
        for m in heads:
            if m.role not in keep:
                plot_worst(m, images, columns, staging / files[f"{m.role}_worst"].name)
                plot_confusions(m, images, examples, staging / files[f"{m.role}_confused"].name)
        (staging / files["report"].name).write_text(report_markdown(heads, files))
        data = {m.role: asdict(m) | {"fingerprint": fingerprints.get(m.role)} for m in heads}
        (staging / files["data"].name).write_text(json.dumps(data, indent=1) + "\n")
    return files


def drawn_before(files: dict[str, Path], fingerprints: dict[str, str]) -> set[str]:
    """The roles whose figures on disk were drawn from these ``fingerprints`` (mistakes.json says so and
    both figures exist): they need not be drawn again."""
    try:
        previous = json.loads(files["data"].read_text())
    except (OSError, ValueError):
        return set()
    return {role for role, fp in fingerprints.items()
            if isinstance(previous.get(role), dict) and previous[role].get("fingerprint") == fp
            and files[f"{role}_worst"].exists() and files[f"{role}_confused"].exists()}
