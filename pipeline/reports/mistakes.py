"""The mistakes, in pictures: which test images a head gets wrong, and what it takes them for.

Data side: it reads an evaluate stage's test_predictions.csv (id, actual, predicted, confidence) and the
test images by id, from the source recorded in splits.json. For one head it finds

- the most confident mistakes: the wrong test predictions, highest confidence (the probability the head
  gave its predicted class) first;
- for each class, its most confused other class (the class its test images are most often taken for)
  with a few of those images, most confident first.

:func:`write_report` draws both for the main head and for the best head (highest test top-1) and
writes them, with mistakes.md and mistakes.json, as one set (:func:`pipeline.core.layout.mistakes_files`).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.core import layout
from pipeline.core.errors import PipelineError
from pipeline.core.fileutil import atomic_files, sha256_json
from pipeline.data.images import thumbnails
from pipeline.data.sources import Splits
from pipeline.store.predictions import Prediction, read_predictions

THUMBNAIL = 128
"""Images are drawn at most this many pixels on a side (CIFAR-10's 32 px as they are)."""


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
    """``main`` or ``best`` (:data:`pipeline.core.layout.MISTAKE_ROLES`)."""
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
    source of ``splits`` in one pass (:func:`pipeline.data.images.thumbnails`)."""
    keys = splits.splits["test"].keys
    missing = sorted(ids - set(keys))
    if missing:
        raise PipelineError(f"test predictions name images that are not in the test split of splits.json "
                            f"({missing[:3]}...): run the evaluate stages again (dvc repro)")
    position = {k: i for i, k in enumerate(keys)}
    return thumbnails(splits.source, sorted(ids, key=position.__getitem__), size, ordered=True)


def plot_worst(mistakes: HeadMistakes, images: dict[str, np.ndarray], columns: int, path: str | Path) -> None:
    """The grid of the most confident mistakes: each image with its true class, the predicted class and the
    confidence."""
    cells = [(images[p.id], f"{p.actual}\n→ {p.predicted} {p.confidence:.2f}") for p in mistakes.worst]
    cols = max(1, min(columns, len(cells)))
    rows = [cells[i : i + cols] for i in range(0, len(cells), cols)] or [[]]
    title = (f"{_who(mistakes)}: the {len(cells)} most confident of {mistakes.n_wrong} mistakes on {mistakes.n_test} "
             "test images (true class, → predicted class and its probability)")
    _draw_grid(rows, cols, title, path, label_lines=2, label_color="tab:red",
               empty="no mistakes" if not cells else None)


def plot_confusions(mistakes: HeadMistakes, images: dict[str, np.ndarray], examples: int, path: str | Path) -> None:
    """One row per class: its most confused other class (how many of its test images went there) and the
    most confident of those images."""
    rows, leads = [], []
    for c in mistakes.confusions:
        leads.append(f"{c.actual}\nno mistakes\n({c.total} images)" if c.predicted is None else
                     f"{c.actual}\n→ {c.predicted}\n{c.count} of {c.total} ({c.count / c.total:.0%})")
        rows.append([(images[p.id], f"{p.confidence:.2f}") for p in c.examples])
    title = (f"{_who(mistakes)}: each class's most confused class (the class its test images are most often "
             "taken for), with the most confident of those images")
    _draw_grid(rows, examples, title, path, label_lines=1, label_color="black", leads=leads)


CELL_INCHES = 1.5
"""The side of one image in the grids, in inches (drawn at 110 dpi)."""


def _draw_grid(rows: list[list[tuple[np.ndarray, str]]], columns: int, title: str, path: str | Path, label_lines: int,
               label_color: str, leads: list[str] | None = None, empty: str | None = None) -> None:
    """Rows of images, each under its label (``label_lines`` lines), optionally each row after a text
    (``leads``), below the wrapped title. The images are laid into one array and drawn as one image on one
    axes, the texts placed at their cells: an axes per image (a subplot grid) took about a second to draw
    for 24 images, half of a head swap's report stage."""
    import textwrap

    from pipeline.core.drawing import figure, save_png

    side = max((max(im.shape[:2]) for row in rows for im, _ in row), default=32)  # pixels of a cell
    inch = CELL_INCHES / side  # inches per pixel of the array
    line = 8 / 72 * 1.4 / inch  # a line of 8-point text, in pixels of the array
    gap, band = round(0.12 / inch), round(label_lines * line + 0.05 / inch)
    lead = round(1.6 * CELL_INCHES / inch) if leads is not None else 0
    pitch_x, pitch_y = side + gap, band + side + gap
    array = np.full((max(1, len(rows)) * pitch_y, lead + columns * pitch_x - gap, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, (image, _) in enumerate(row):
            h, w = image.shape[:2]  # at most side x side: centred in its cell
            top, left = r * pitch_y + band + (side - h) // 2, lead + c * pitch_x + (side - w) // 2
            array[top : top + h, left : left + w] = image[..., :3] if image.ndim == 3 else image[..., None]
    width = max(6.0, array.shape[1] * inch + 0.2)
    wrapped = textwrap.fill(title, width=int(width * 13))
    title_inches = 0.16 + 9 / 72 * 1.25 * (wrapped.count("\n") + 1)
    height = array.shape[0] * inch + title_inches + 0.1
    fig = figure(figsize=(width, height))
    fig.suptitle(wrapped, fontsize=9, y=1 - 0.08 / height, va="top")
    ax = fig.add_axes((0.1 / width, 0.1 / height, array.shape[1] * inch / width, array.shape[0] * inch / height))
    ax.imshow(array, interpolation="nearest" if side < 64 else "antialiased")
    ax.axis("off")
    for r, row in enumerate(rows):
        for c, (_, label) in enumerate(row):
            ax.text(lead + c * pitch_x + side / 2, r * pitch_y + band - 0.02 / inch, label, ha="center", va="bottom",
                    fontsize=8, color=label_color, linespacing=1.1)
        if leads is not None:
            ax.text(0, r * pitch_y + band + side / 2, leads[r], ha="left", va="center", fontsize=9)
    if empty:
        ax.text(array.shape[1] / 2, array.shape[0] / 2, empty, ha="center", va="center")
    save_png(fig, path)


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
    outputs by name, default :func:`pipeline.core.layout.mistakes_files`; all in one folder). The roles in
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
