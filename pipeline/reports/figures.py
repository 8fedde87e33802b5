"""The pictures and the Markdown table of the report stage's comparison and page (the heads compared, the
chosen head's reliability diagram; the confusion matrix is DVC's plot of test_predictions.csv), drawn with
:mod:`pipeline.core.drawing`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.drawing import figure, save_png


def plot_reliability(stats: dict, path: str | Path, title: str, before: dict | None = None,
                     after: dict | None = None) -> None:
    """Accuracy against confidence per bin (bars) with the ECE; ``before``: the statistics of the
    uncalibrated probabilities of a calibrated head, drawn as points (mean confidence, accuracy) per bin;
    ``after``: those of an uncalibrated head's probabilities with a temperature fitted on val (not applied), also
    drawn as points."""
    edges = np.array(stats["edges"])
    centres, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    count = np.array(stats["count"])
    fig = figure(figsize=(5, 5.8), layout="constrained")
    ax = fig.subplots()
    ax.bar(centres[count > 0], np.array(stats["accuracy"])[count > 0], width=width * 0.95, color="tab:blue",
           edgecolor="black", label="accuracy" if before is None else "accuracy, calibrated")
    for points, colour, label in ((before, "tab:orange", "uncalibrated"),
                                  (after, "tab:green", "with a temperature fitted on val")):
        if points is not None:
            used = np.array(points["count"]) > 0
            ax.plot(np.array(points["confidence"])[used], np.array(points["accuracy"])[used], "o-", color=colour,
                    label=f"{label} (ECE {points['ece']:.4f})")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"{title}\nECE {stats['ece']:.4f}")
    fig.legend(loc="outside lower center", fontsize=8, ncol=2, frameon=False)  # off the data
    save_png(fig, path)


def comparison_table(rows: list[dict]) -> str:
    """Markdown table of heads, best first: test top-1 with its interval (and, for heads refit with several
    seeds, their mean ± sd beside it) and the paired test against the best head, the test top-1 without
    near-copies (when the rows have it) and without the possible ones too (when there are any), top-5, mean
    per-class, the held-out val figure, ECE, fit time, what fitting chose."""
    clean = [r.get("test_without_near_copies") for r in rows]
    with_clean = all(c is not None for c in clean) and bool(rows)
    cleaner = [r.get("test_without_possible_copies") for r in rows]
    with_cleaner = with_clean and all(c is not None for c in cleaner) and cleaner[0]["removed"] > clean[0]["removed"]
    seeded = any("seeds" in r for r in rows)
    header = ["head", "kind", "test top-1 (95% CI)"] + (["over seeds: mean ± sd"] if seeded else [])
    header += ["vs best: p (McNemar)"]
    header += [f"test top-1 without near-copies ({clean[0]['removed']} removed)"] if with_clean else []
    header += [f"... and without possible ones ({cleaner[0]['removed']} removed)"] if with_cleaner else []
    header += ["test top-5", "mean per-class", "val top-1", "ECE", "fit s", "chosen"]
    align = ["---"] * (4 + seeded + with_clean + with_cleaner) + ["---:"] * 5 + ["---"]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    for r, c, c2 in zip(rows, clean, cleaner):
        test, val = r["test"], r.get("val", {})
        chosen = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.get("chosen", {}).items()
                           if k != "chosen_val_top1")
        versus = r.get("versus_best")
        if versus is None:
            paired = "best"
        else:
            paired = f"{versus['p_value']:.2g}" + (" (differs)" if versus["p_value"] < 0.05 else "")
        held_out = f"{val['top1']:.4f}" + ("*" if val.get("on", "").startswith("sweep") else "") if "top1" in val else ""
        cells = [r["name"], r["head"], f"{test['top1']:.4f} ({test['top1_low']:.4f}-{test['top1_high']:.4f})"]
        if seeded:
            s = r.get("seeds")
            cells += ["" if s is None else f"{s['mean']:.4f} ± {s['sd']:.4f} ({s['n']} seeds{', splits' if s['splits'] else ''})"]
        cells += [paired]
        cells += [f"{c['top1']:.4f} ({c['top1_low']:.4f}-{c['top1_high']:.4f})"] if with_clean else []
        cells += [f"{c2['top1']:.4f} ({c2['top1_low']:.4f}-{c2['top1_high']:.4f})"] if with_cleaner else []
        cells += [f"{test.get('top5', float('nan')):.4f}", f"{test['mean_class_accuracy']:.4f}", held_out,
                  f"{test.get('ece', float('nan')):.4f}", f"{r.get('fit_seconds', float('nan')):.1f}", chosen]
        lines.append("| " + " | ".join(cells) + " |")
    note = ("\n95% CI: Wilson score interval over the test images. vs best: exact McNemar test of the head against the "
            "best one on the same test images (two-sided p; \"differs\" when p < 0.05). ")
    if with_clean:
        note += (f"Without near-copies: the top-1 on the {clean[0]['n']} test images that have no confirmed near-copy "
                 "in train or val (evaluation/leakage/pairs.csv, docs/leakage.md). ")
    if with_cleaner:
        note += (f"Without possible ones: on the {cleaner[0]['n']} that also have no possible near-copy (a pair just "
                 "below the decision, where copies and look-alikes overlap: leakage.possible_margin); the two "
                 "figures bound what the copies could change. ")
    note += ("val top-1 marked * is the held-out accuracy of a swept head at the chosen penalty, measured before it "
             "was refit on train + val; no figure is ever measured on images a head was fitted on. ECE: expected "
             "calibration error of the head's probabilities (15 bins): the softmax of its scores, divided by the "
             "temperature for a head with calibrate: true (chosen: temperature=T).\n")
    if seeded:
        note += ("\nover seeds: mean ± standard deviation (ddof = 1) of test top-1 over the fits of the seeds stage, one per "
                 "seed of seeds.values; \"splits\": each seed also re-carved train / val (evaluation/seeds.md).\n")
    return "\n".join(lines) + "\n" + note


def plot_comparison(rows: list[dict], path: str | Path, chosen: str | None = None) -> None:
    """Test top-1 of each head (rows best first) as a point with its 95% interval as whiskers, on an axis
    zoomed to the data; the head chosen on validation (``chosen``) marked; the figure without near-copies
    beside each point when the rows have it and some test image was left out; the legend under the axis, off
    the data."""
    from matplotlib.ticker import PercentFormatter

    n = len(rows)
    y = np.arange(n)[::-1]  # best at the top
    top1 = np.array([r["test"]["top1"] for r in rows])
    low, high = np.array([r["test"]["top1_low"] for r in rows]), np.array([r["test"]["top1_high"] for r in rows])
    fig = figure(figsize=(7.5, 1.6 + 0.42 * n), layout="constrained")
    ax = fig.subplots()
    colours = ["tab:red" if r["name"] == chosen else "tab:blue" for r in rows]
    ax.hlines(y, low, high, colors=colours, linewidth=2)
    ax.scatter(top1, y, c=colours, s=36, zorder=3)
    ax.scatter([], [], c="tab:blue", s=36, label="test top-1, 95% interval")
    if chosen is not None:
        ax.scatter([], [], c="tab:red", s=36, label="chosen on validation")
    lowest = low.min()
    if n and all("test_without_near_copies" in r for r in rows) and rows[0]["test_without_near_copies"]["removed"]:
        clean = [r["test_without_near_copies"] for r in rows]
        ax.scatter([c["top1"] for c in clean], y - 0.28, marker="^", s=22, facecolors="none", edgecolors="0.3",
                   zorder=3, label=f"without the {clean[0]['removed']} test images with a near-copy")
        lowest = min(lowest, min(c["top1"] for c in clean))
    span = max(high.max() - lowest, 0.005)
    for yi, v, hi in zip(y, top1, high):
        ax.text(hi + 0.015 * span, yi, f"{100 * v:.2f}%", va="center", fontsize=9)
    ax.set_xlim(lowest - 0.05 * span, high.max() + 0.16 * span)
    ax.set_ylim(-0.7, n - 0.4)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=1 if span < 0.05 else 0))
    ax.set_yticks(y, [r["name"] for r in rows])
    for label, r in zip(ax.get_yticklabels(), rows):
        if r["name"] == chosen:
            label.set_color("tab:red")
            label.set_fontweight("bold")
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel(f"test top-1 (axis zoomed to the data; n = {rows[0]['test']['n']} test images)")
    ax.set_title("heads compared on the same test images", fontsize=11)
    fig.legend(loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    save_png(fig, path)
