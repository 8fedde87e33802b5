"""Stage compare-backbones: which pretrained model suits the data, in one table and one chart.

Reads what extract-backbone, probe-backbone and curves-backbone wrote for each backbone of
``backbones.compare`` (evaluation/backbones/<name>/extract.json, probe.json, curves.csv) and writes
``evaluation/backbones.md`` (per backbone: the reference head's test top-1, the other heads', their val
top-1, LogME, feature dimension, parameters, extraction images/s and time, cache size; and the learning
curve of the first curve head per backbone), ``evaluation/backbones.png`` (test top-1 against extraction
cost, against LogME, and against labels per class) and ``evaluation/backbones.json`` (
Kendall's tau between each estimate's ranking of the backbones and the reference head's). With no
backbone compared it writes a table saying so.

``--plan`` (stage plan-backbones) writes only ``evaluation/backbones/plan.json``: the names compared and
the reference head. It keeps evaluation/backbones/ a folder some stage always writes, so that this stage's
folder dependency exists even with no backbone compared (after ``rm -rf evaluation`` too).
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.analyses.transferability import kendall_tau
from pipeline.core import layout
from pipeline.core.config import Params
from pipeline.core.fileutil import atomic_files, write_json
from pipeline.reports.backbones import read_rows


def curve_head(rows: list[dict]) -> str | None:
    """The head whose learning curves are compared: the first of curves.heads (the first head of curves.csv)."""
    return rows[0]["curve"][0]["head"] if rows and rows[0]["curve"] else None


def estimates(rows: list[dict], reference: str) -> dict[str, dict[str, float]]:
    """What may predict the reference head's test top-1 without fitting it, per backbone: LogME, and the val
    top-1 of every head fitted on train alone (k-NN's is the usual one)."""
    out: dict[str, dict[str, float]] = {"logme": {r["name"]: r["logme"] for r in rows}}
    for head in rows[0]["heads"] if rows else []:
        if head != reference and all("val_top1" in r["heads"].get(head, {}) for r in rows):
            out[f"{head} val top-1"] = {r["name"]: r["heads"][head]["val_top1"] for r in rows}
    return out


def agreement(rows: list[dict], reference: str) -> dict:
    """Kendall's tau (tau-b, and the weighted tau of the LogME paper) between each estimate's ranking of the
    backbones and the ranking by the reference head's test top-1; None with fewer than 2 backbones."""
    truth = {r["name"]: r["heads"][reference]["test_top1"] for r in rows}
    out = {}
    for estimate, scores in estimates(rows, reference).items():
        enough = len(rows) >= 2
        out[estimate] = {"kendall_tau": kendall_tau(scores, truth) if enough else None,
                         "weighted_tau": kendall_tau(scores, truth, weighted=True) if enough else None}
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _signed(x: float | None) -> str:
    return "-" if x is None else f"{x:+.3f}"


def table(rows: list[dict], reference: str, taus: dict) -> str:
    if not rows:
        return ("# Backbones compared\n\nNo backbone is compared: list names of backbones.configurations in "
                "backbones.compare (docs/backbones.md).\n")
    heads = list(rows[0]["heads"])
    others = [h for h in heads if h != reference]
    vals = [h for h in heads if all("val_top1" in r["heads"][h] for r in rows)]
    best = max(rows, key=lambda r: r["heads"][reference]["test_top1"])
    cols = ([f"{reference} test top-1"] + [f"{h} test top-1" for h in others] + [f"{h} val top-1" for h in vals]
            + ["LogME", "dim", "parameters", "input", "extraction images/s", "extraction time", "cache"])
    lines = ["# Backbones compared", "",
             f"Each backbone extracted once into its own pooled cache; every head fitted on its train split. "
             f"Sorted by the test top-1 of `{reference}`; best: **{best['name']}**. Extraction measured on "
             f"{rows[0]['machine']}.", "",
             "| backbone | model | " + " | ".join(cols) + " |", "| --- | --- |" + " ---: |" * len(cols)]
    for r in sorted(rows, key=lambda r: -r["heads"][reference]["test_top1"]):
        h = r["heads"]
        weights = "random init" if r["weights"] is None else r["weights"]
        cells = ([_pct(h[reference]["test_top1"])] + [_pct(h[o]["test_top1"]) for o in others]
                 + [_pct(h[v]["val_top1"]) for v in vals]
                 + [f"{r['logme']:.4f}", str(r["feature_dim"]), f"{r['parameters'] / 1e6:.2f} M", f"{r['input_size']} px",
                    f"{r['images_per_second']:.1f}", f"{r['seconds'] / 60:.1f} min", f"{r['cache_mib']:.0f} MiB"])
        lines.append(f"| {r['name']} | {r['backbone']} ({weights}) | " + " | ".join(cells) + " |")
    lines += ["", f"## Do the cheap estimates rank the backbones as `{reference}` does?", "",
              "Kendall's tau between each estimate's ranking and the ranking by test top-1 (1: same order, -1: "
              "reversed; weighted: swaps near the top count more).", "",
              "| estimate | Kendall tau | weighted tau |", "| --- | ---: | ---: |"]
    for estimate, t in taus.items():
        lines.append(f"| {estimate} | {_signed(t['kendall_tau'])} | {_signed(t['weighted_tau'])} |")
    head = curve_head(rows)
    if head:
        shots = list(dict.fromkeys(p["shots"] for r in rows for p in r["curve"]))
        lines += ["", f"## Test top-1 with k labelled images per class (`{head}`, mean over the draws)", "",
                  "The learning curve of each backbone (evaluation/backbones/<name>/curves.md): which backbone is best "
                  "at your labelling budget.", "",
                  "| backbone | " + " | ".join(f"k = {k}" for k in shots) + " |", "| --- |" + " ---: |" * len(shots)]
        for r in rows:
            at = {p["shots"]: p["top1"] for p in r["curve"] if p["head"] == head}
            lines.append(f"| {r['name']} | " + " | ".join(_pct(float(at[k])) if at.get(k) else "-" for k in shots) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], reference: str, path: str | Path) -> None:
    """Test top-1 of the reference head against extraction images/s (left) and against LogME (right)."""
    from pipeline.core.drawing import figure, save_png

    fig = figure(figsize=(16, 4.4))
    axes = fig.subplots(1, 3)
    if not rows:
        for ax in axes:
            ax.text(0.5, 0.5, "no backbone compared", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
        save_png(fig, path)
        return
    top1 = [r["heads"][reference]["test_top1"] for r in rows]
    for ax, x, label in ((axes[0], [r["images_per_second"] for r in rows], "extraction images/s (higher: cheaper)"),
                         (axes[1], [r["logme"] for r in rows], "LogME (on the train split)")):
        ax.scatter(x, top1, s=40, color="tab:blue", zorder=3)
        for r, xi, yi in zip(rows, x, top1):
            ax.annotate(r["name"], (xi, yi), textcoords="offset points", xytext=(5, 4), fontsize=9)
        ax.set_xlabel(label)
        ax.set_ylabel(f"{reference}: test top-1")
        ax.grid(alpha=0.3)
    axes[0].set_title(f"accuracy against cost ({rows[0]['machine'].split(';')[0]})", fontsize=10)
    axes[1].set_title("accuracy against the estimate", fontsize=10)
    head = curve_head(rows)
    for r in rows if head else []:
        points = [(float(p["k"]), float(p["top1"])) for p in r["curve"] if p["head"] == head]
        axes[2].plot(*zip(*points), marker="o", markersize=3, label=r["name"])
    axes[2].set_xscale("log")
    axes[2].set_xlabel("labelled training images per class (k)")
    axes[2].set_ylabel(f"{head}: mean test top-1")
    axes[2].set_title("learning curves", fontsize=10)
    axes[2].grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    save_png(fig, path)


def run(names: list[str], reference: str, folder: str | Path, out_stem: str | Path) -> dict:
    """Compare the backbones ``names`` from their files in ``folder``; write ``<out_stem>.md``, ``.png`` and
    ``.json``; returns the rank agreement."""
    rows = read_rows(names, folder)
    taus = agreement(rows, reference) if rows else {}
    out_stem = Path(out_stem)
    text = table(rows, reference, taus)
    with atomic_files(out_stem.parent) as staging:
        (staging / f"{out_stem.name}.md").write_text(text)
        plot(rows, reference, staging / f"{out_stem.name}.png")
        write_json(staging / f"{out_stem.name}.json", {"backbones": names, "reference": reference, "agreement": taus})
    print(text)
    return taus


def main(argv: list[str] | None = None) -> int:
    from pipeline.core.cli import parser, run_stage

    cli = parser(__doc__)
    cli.add_argument("--plan", action="store_true", help="write only evaluation/backbones/plan.json")
    args = cli.parse_args(argv)

    def stage(params: Params, a) -> dict:
        b = params.backbones
        if a.plan:
            plan = {"compare": b.compare, "reference": b.reference}
            write_json(layout.BACKBONES_PLAN, plan)
            return plan
        return run(b.compare, b.reference, layout.BACKBONES, layout.BACKBONES)

    return run_stage(args, stage)


if __name__ == "__main__":
    sys.exit(main())
