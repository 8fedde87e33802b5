"""Learning curves: test top-1 against the number of labelled training images per class, from the cache.

Head side only: everything here reads pooled features and labels (from the feature store), never an
image or the backbone. The protocol (docs/learning-curves.md):

- **Draws.** For each k of ``curves.shots`` and each of ``curves.draws`` draws, k training images per
  class are drawn from the *train* split only (stratified: min(k, images of the class) of every
  class). Draw d orders each class's images at random with a generator seeded from (``seed``, d); the
  k-shot set is the first k of each class, so the sets of one draw are nested (the 2-shot set holds the
  1-shot set). ``all`` is one draw: the whole train split. A k at least as large as every class is the
  whole split and is left out (it is ``all``).
- **Selection inside the k-shot set.** A head with an L2 penalty (``logistic``, ``linear``, ``ridge``)
  chooses it *inside the k-shot set* when every class has at least ``min_shots_for_cv`` images, else
  uses ``fixed_l2``; then refits on the whole k-shot set. How it holds images out is the head's own
  (:meth:`~pipeline.heads.linear.PenalisedHead.held_out_top1`): logistic and linear by stratified
  ``cv_folds``-fold cross-validation (normalisation refitted on each fold's training part), ridge by
  exact leave-one-out. The validation and test splits are never seen by a fit or a selection. At
  ``all`` every head is fitted exactly as the train stage fits it, with its own params: the curve's
  ``all`` point is that head's test top-1 from the evaluate stage.
- **Scores.** Each fit is scored on the whole test split. Per k and head: the mean, the standard
  deviation (ddof = 1) and a t-interval (level ``confidence``) of test top-1 over the draws.

This module is the protocol only: the fits of the k-shot sets are each head's
:meth:`~pipeline.heads.base.PooledHead.curve_fits`, whose default fits one head per set and which a
kind overrides where it has a faster way (:mod:`pipeline.heads.shots`).
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

from pipeline.core.config import ALL_SHOTS, CurvesParams, HeadConfig
from pipeline.core.drawing import figure, save_png
from pipeline.core.fileutil import atomic_path, write_json
from pipeline.core.head_registry import head_class
from pipeline.heads.metrics import t_quantile
from pipeline.heads.shots import ShotFit, ShotSet, TestSplit

if TYPE_CHECKING:
    from pipeline.heads.base import PooledHead

DRAW_STREAM = 0x6375  # "cu": keeps the draws' random stream apart from other uses of the seed


# -- the draws ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Draw:
    """One k-shot training set: ``rows`` index the train split (sorted)."""

    shots: int | str
    draw: int
    rows: np.ndarray = field(repr=False)


def class_orders(labels: np.ndarray, n_classes: int, draws: int, seed: int) -> list[list[np.ndarray]]:
    """For each draw, each class's training rows in a random order seeded from (seed, draw)."""
    orders = []
    for d in range(draws):
        rng = np.random.default_rng([seed, DRAW_STREAM, d])
        orders.append([rng.permutation(np.flatnonzero(labels == c)) for c in range(n_classes)])
    return orders


def shot_rows(order: list[np.ndarray], k: int) -> np.ndarray:
    """The k-shot set of one draw: the first k rows of each class (all of a smaller class), sorted."""
    return np.sort(np.concatenate([o[:k] for o in order]))


def plan_draws(labels: np.ndarray, n_classes: int, curves: CurvesParams, seed: int,
               log: Callable[[str], None] = print) -> list[Draw]:
    """Every k-shot set of the curve, in order of k then draw."""
    orders = class_orders(labels, n_classes, curves.draws, seed)
    largest = int(np.bincount(labels, minlength=n_classes).max()) if len(labels) else 0
    plan = []
    for k in curves.shots:
        if k == ALL_SHOTS:
            plan.append(Draw(ALL_SHOTS, 0, np.arange(len(labels))))
        elif k >= largest:
            log(f"k = {k}: every class has at most {largest} training images, so this is the whole split: left out")
        else:
            plan += [Draw(k, d, shot_rows(order, k)) for d, order in enumerate(orders)]
    return plan


# -- one fit ------------------------------------------------------------------------------------
@dataclass
class Fit:
    """A head fitted on one k-shot set and scored on the whole test split: where, then the head's
    :class:`~pipeline.heads.shots.ShotFit` (one row of curve_draws.csv)."""

    head: str
    kind: str
    shots: int | str
    draw: int
    n_train: int
    top1: float
    l2: float | None = None
    """The L2 penalty of the fit (mean loss + l2 / 2 ||W||^2), for penalised kinds."""
    C: float | None = None
    """scikit-learn's C of the logistic fit: 1 / (l2 N)."""
    selection: str = "configured"
    """How the penalty was set: ``cv`` (chosen inside the k-shot set), ``fixed`` (``fixed_l2``,
    too few images per class for cv) or ``configured`` (the head's own params: k = all, and the kinds
    without a chosen penalty)."""
    cv_top1: float | None = None
    """Held-out top-1 at the chosen penalty (inside the k-shot set)."""
    neighbours: int | None = None
    """k-NN: neighbours used, min(knn.k, training images)."""


def fold_seed(seed: int, k: int, draw: int) -> int:
    """The seed of the folds of a penalty chosen inside the k-shot set of (k, draw)."""
    return int(np.random.SeedSequence([seed, DRAW_STREAM, k, draw]).generate_state(1)[0])


def _whole_split(head_class_: type[PooledHead], config: HeadConfig, train: tuple[np.ndarray, np.ndarray],
                 n_classes: int, test: TestSplit, seed: int) -> ShotFit:
    """k = all: the head fitted exactly as the train stage fits it, scored as the evaluate stage scores it."""
    head = head_class_(config.params, seed=seed).fit(*train, n_classes=n_classes)
    return ShotFit(test.exact_top1(head), **head.penalty(len(train[1])))


def learning_curve(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], n_classes: int,
                   curves: CurvesParams, seed: int, block_rows: int = 1 << 16,
                   log: Callable[[str], None] = print) -> list[Fit]:
    """Fit every head of ``curves.heads`` on every k-shot set of the training split and score it on
    the test split: the k-shot sets through the head's own :meth:`~pipeline.heads.base.PooledHead.curve_fits`,
    k = all as the train stage fits it. ``block_rows``: rows per block when scoring at k = all (the
    evaluate stage's)."""
    plan = plan_draws(train[1], n_classes, curves, seed, log)
    shots = [d for d in plan if d.shots != ALL_SHOTS]
    sets = [ShotSet(d.rows, fold_seed(seed, int(d.shots), d.draw)) for d in shots]
    scorer = TestSplit(*test, block_rows)
    fits = []
    for config in curves.head_configs():
        name, kind = config.key.rsplit(".", 1)[1], head_class(config.kind)
        start = time.perf_counter()
        numeric = iter(kind.curve_fits(config.params, seed, train, n_classes, sets, scorer, curves))
        head_fits = [Fit(name, config.kind, d.shots, d.draw, len(d.rows),
                         **asdict(_whole_split(kind, config, train, n_classes, scorer, seed)
                                  if d.shots == ALL_SHOTS else next(numeric)))
                     for d in plan]
        seconds = time.perf_counter() - start
        for line in describe(head_fits, curves.confidence):
            log(line)
        log(f"{name}: {len(head_fits)} fits in {seconds:.1f} s")
        fits += head_fits
    return fits


# -- summaries ----------------------------------------------------------------------------------
@dataclass
class Point:
    """One point of the curve: a head at one k, over its draws."""

    head: str
    shots: int | str
    k: float
    """Labelled training images per class: k, or the mean per class for ``all``."""
    n_draws: int
    n_train: float
    mean: float
    std: float | None
    low: float | None
    high: float | None
    penalty: str = ""


def t_interval(values: list[float], confidence: float) -> tuple[float, float | None, float | None, float | None]:
    """Mean, standard deviation (ddof 1) and the t-interval of the mean at ``confidence``; None where
    there is a single value (``scipy.stats.t.interval``'s, with :func:`t_quantile`)."""
    v = np.asarray(values, dtype=np.float64)
    mean = float(v.mean())
    if len(v) < 2:
        return mean, None, None, None
    std = float(v.std(ddof=1))
    half = t_quantile(len(v) - 1, (1 + confidence) / 2) * std / math.sqrt(len(v))
    return mean, std, mean - half, mean + half


def _penalty_text(fits: list[Fit]) -> str:
    if fits[0].l2 is None:
        return f"{fits[0].neighbours} neighbours" if fits[0].neighbours is not None else ""
    how = {"cv": "CV", "fixed": "fixed", "configured": "configured"}
    counts: dict[tuple[float, str], int] = {}
    for f in fits:
        counts[(f.l2, f.selection)] = counts.get((f.l2, f.selection), 0) + 1
    parts = [f"l2 {l2:.3g} {how[sel]}" + (f" x{c}" if len(fits) > 1 else "") for (l2, sel), c in sorted(counts.items())]
    if fits[0].selection == "configured" and fits[0].C is not None:
        parts[0] += f" (C = {fits[0].C:.3g})"
    return ", ".join(parts)


def summarise(fits: list[Fit], n_classes: int, confidence: float) -> list[Point]:
    """Points per head and k (in the order of the fits)."""
    groups: dict[tuple[str, int | str], list[Fit]] = {}
    for f in fits:
        groups.setdefault((f.head, f.shots), []).append(f)
    points = []
    for (head, shots), group in groups.items():
        mean, std, low, high = t_interval([f.top1 for f in group], confidence)
        n_train = float(np.mean([f.n_train for f in group]))
        k = n_train / n_classes if shots == ALL_SHOTS else float(shots)
        points.append(Point(head, shots, k, len(group), n_train, mean, std, low, high, _penalty_text(group)))
    return points


def describe(fits: list[Fit], confidence: float) -> Iterable[str]:
    """One printed line per k of one head: mean, spread, and the penalty chosen and how."""
    for p in summarise(fits, 1, confidence):
        spread = f" +- {p.std:.4f} [{p.low:.4f}, {p.high:.4f}]" if p.std is not None else ""
        line = f"{p.head:>16} k={str(p.shots):>5}: test top-1 {p.mean:.4f}{spread} ({p.n_draws} draws) {p.penalty}"
        yield line.rstrip()


def labels_needed(points: list[Point], head: str, target: float) -> tuple[int | str | None, float | None]:
    """The smallest k whose mean top-1 reaches ``target`` x the head's k = all top-1, and a log-linear
    interpolation between it and the k before it (None without a k = all point)."""
    mine = [p for p in points if p.head == head]
    full = next((p.mean for p in mine if p.shots == ALL_SHOTS), None)
    if full is None:
        return None, None
    goal = target * full
    for i, p in enumerate(mine):
        if p.mean >= goal:
            if i == 0:
                return p.shots, p.k
            q = mine[i - 1]
            share = (goal - q.mean) / (p.mean - q.mean)
            return p.shots, float(math.exp(math.log(q.k) + share * (math.log(p.k) - math.log(q.k))))
    return None, None


def best_heads(points: list[Point]) -> dict[str, dict]:
    """Per k: the head with the highest mean, its margin over the next, and whether their intervals are apart."""
    out = {}
    for shots in dict.fromkeys(p.shots for p in points):
        ranked = sorted((p for p in points if p.shots == shots), key=lambda p: -p.mean)
        first = ranked[0]
        entry = {"head": first.head, "top1": round(first.mean, 4)}
        if len(ranked) > 1:
            second = ranked[1]
            entry["margin"] = round(first.mean - second.mean, 4)
            entry["apart"] = (first.low is not None and second.high is not None and first.low > second.high)
        out[str(shots)] = entry
    return out


def headline(points: list[Point], targets: list[float]) -> dict:
    """The small summary a user acts on (evaluation/curves.json, read by the report)."""
    heads = list(dict.fromkeys(p.head for p in points))
    full = {h: round(p.mean, 4) for h in heads for p in points if p.head == h and p.shots == ALL_SHOTS}
    needed = {f"{round(100 * t)}%": {h: labels_needed(points, h, t)[0] for h in heads} for t in targets} if full else {}
    return {"full_top1": full, "labels_per_class_for": needed,
            "best_head": {k: v["head"] for k, v in best_heads(points).items()}}


# -- outputs ------------------------------------------------------------------------------------
def _cell(x: float | None, digits: int = 4) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def markdown(points: list[Point], fits: list[Fit], curves: CurvesParams, seed: int) -> str:
    heads = list(dict.fromkeys(p.head for p in points))
    shots = list(dict.fromkeys(p.shots for p in points))
    pct = round(100 * curves.confidence)
    rules = [f"{f.head} ({head_class(f.kind).selection_rule(curves)})"
             for f in {f.head: f for f in fits if f.selection != "configured"}.values()]
    lines = [
        "# Learning curve",
        "",
        f"Test top-1 against labelled training images per class (k), on the pooled feature cache. Each k: "
        f"{curves.draws} stratified draws from the train split (seeded from seed = {seed}, nested across k); k = all "
        f"is one draw, the whole train split, each head with its own params. Every fit is scored on the whole test "
        f"split. Interval: {pct}% t-interval of the mean over the draws. Penalty of the {', '.join(rules)} heads "
        f"chosen inside the k-shot set over l2 in "
        f"[{curves.grid.low:g}, {curves.grid.high:g}] ({curves.grid.num} values) when every class has at least "
        f"{curves.min_shots_for_cv} images, else l2 = {curves.fixed_l2:g}; the validation and test splits are "
        "never used to choose. Protocol: docs/learning-curves.md.",
        "",
        "## Mean test top-1 (best head per k in bold)",
        "",
        "| k | " + " | ".join(heads) + " |",
        "| ---: | " + " | ".join("---:" for _ in heads) + " |",
    ]
    best = best_heads(points)
    for k in shots:
        row = {p.head: p for p in points if p.shots == k}
        cells = []
        for h in heads:
            text = _cell(row[h].mean) if h in row else ""
            cells.append(f"**{text}**" if h in row and best[str(k)]["head"] == h else text)
        label = k if k != ALL_SHOTS else f"all ({row[heads[0]].k:.0f})"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "## Labels per class to reach a share of the k = all top-1", "",
              "Smallest k of the curve whose mean reaches the share; in brackets, a log-linear interpolation "
              "between that k and the one before.", "",
              "| head | top-1 at k = all | " + " | ".join(f"{round(100 * t)}%" for t in curves.targets) + " |",
              "| --- | ---: | " + " | ".join("---:" for _ in curves.targets) + " |"]
    for h in heads:
        full = next((p.mean for p in points if p.head == h and p.shots == ALL_SHOTS), None)
        cells = []
        for t in curves.targets:
            k, estimate = labels_needed(points, h, t)
            cells.append("" if k is None else f"{k} (~{estimate:.0f})" if k != ALL_SHOTS else f"all (~{estimate:.0f})")
        lines.append(f"| {h} | {_cell(full)} | " + " | ".join(cells) + " |")
    lines += ["", "## Best head per k", "", "| k | best | mean top-1 | margin over the next | intervals apart |",
              "| ---: | --- | ---: | ---: | --- |"]
    for k, b in best.items():
        lines.append(f"| {k} | {b['head']} | {b['top1']:.4f} | {_cell(b.get('margin'))} | "
                     f"{'yes' if b.get('apart') else 'no'} |")
    lines += ["", "## Every point", "",
              f"| head | k | draws | train images | mean | std | {pct}% interval | penalty (how chosen) |",
              "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for p in points:
        interval = f"[{p.low:.4f}, {p.high:.4f}]" if p.low is not None else ""
        lines.append(f"| {p.head} | {p.shots} | {p.n_draws} | {p.n_train:.0f} | {p.mean:.4f} | {_cell(p.std)} | "
                     f"{interval} | {p.penalty} |")
    lines += ["", "Penalty: l2 of mean cross-entropy + l2/2 ||W||^2 (C = 1 / (l2 N) for scikit-learn); CV: chosen "
              "by cross-validation inside the k-shot set; fixed: curves.fixed_l2 (too few images per class for "
              "cross-validation); configured: the head's own params. Every fit: evaluation/curve_draws.csv.", ""]
    return "\n".join(lines)


def plot(points: list[Point], path: str | Path, title: str) -> None:
    """Mean test top-1 against k (log scale), one line per head, the interval over the draws as a band."""
    fig = figure(figsize=(7.5, 4.8))
    ax = fig.subplots()
    for head in dict.fromkeys(p.head for p in points):
        mine = [p for p in points if p.head == head]
        k = [p.k for p in mine]
        line, = ax.plot(k, [p.mean for p in mine], marker="o", markersize=3.5, label=head)
        banded = [p for p in mine if p.low is not None]
        if banded:
            ax.fill_between([p.k for p in banded], [p.low for p in banded], [p.high for p in banded],
                            color=line.get_color(), alpha=0.2, linewidth=0)
    ticks = list(dict.fromkeys((p.k, p.shots) for p in points))
    ax.set_xscale("log", base=2)
    labels = [f"all\n({k:.0f})" if s == ALL_SHOTS else str(s) for k, s in ticks]
    ax.set_xticks([k for k, _ in ticks], labels, fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("labelled training images per class (k)")
    ax.set_ylabel("test top-1")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save_png(fig, path)


def write_outputs(fits: list[Fit], points: list[Point], curves: CurvesParams, seed: int, stem: str | Path,
                  draws_path: str | Path, title: str) -> dict:
    """<stem>.md, .png, .json (headline), .csv (one row per head and k: mean top-1 and its interval, the
    DVC plot) and the every-fit table ``draws_path``."""
    stem = Path(stem)
    summary = headline(points, curves.targets)
    with atomic_path(stem.with_suffix(".csv")) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["head", "k", "shots", "top1", "low", "high"])
        writer.writerows([p.head, round(p.k, 2), p.shots, _cell(p.mean), _cell(p.low), _cell(p.high)] for p in points)
    with atomic_path(draws_path) as tmp, open(tmp, "w", newline="") as f:
        names = list(asdict(fits[0])) if fits else []
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in asdict(fit).items()} for fit in fits)
    with atomic_path(stem.with_suffix(".md")) as tmp:
        tmp.write_text(markdown(points, fits, curves, seed))
    plot(points, stem.with_suffix(".png"), title)
    write_json(stem.with_suffix(".json"), summary)
    return summary


def read_points(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
