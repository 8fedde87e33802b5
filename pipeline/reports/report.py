"""The report: the five questions of a transfer-learning run, each answered in one sentence computed from
the figures, then the evidence (tables and the pipeline's pictures).

It reads only what the other stages wrote (comparison.json, the heads' metrics and details, the learning
curves, the backbone comparison, seeds.json, the leakage summary, the mistakes): no image, no backbone, no
fitting. The document is a list of blocks (:class:`Doc`) rendered twice: GitHub-flavoured Markdown with
relative links to the pictures (``report.md``) and one self-contained HTML page with the pictures embedded
as data URIs (``report.html``: no request leaves it).

The rules the sentences follow:

- **Which head** is chosen on validation (the highest held-out val top-1; a tie goes to the cheaper fit), never
  on test; its test top-1 and interval are then the unbiased figure. It is compared with the runner-up on
  validation and with the main head by the exact McNemar test on the same test images, with Holm's correction
  over those comparisons at :data:`ALPHA`: a difference is stated only when the adjusted p is below it.
- **Single draws** (the fine-tuned top's curve by default) have no interval, and the sentence says so.
- A part that was not run (no fine-tuned head, no backbone compared, no seeds, no validation split) gets a
  sentence saying so and how to run it.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from pipeline.analyses.curves import Fit, Point, best_heads, labels_needed, summarise, t_interval
from pipeline.analyses.curves import plot as plot_curve
from pipeline.analyses.leakage import plain_background_note
from pipeline.core import layout
from pipeline.core.config import ALL_SHOTS, Params
from pipeline.core.errors import PipelineError
from pipeline.core.fileutil import atomic_files, sha256_json
from pipeline.heads.metrics import held_out_val_top1, holm, validation_order, wilson_interval
from pipeline.reports.backbones import read_rows
from pipeline.reports.figures import plot_reliability

ALPHA = 0.05
"""Family-wise significance level of the head comparisons (Holm's correction)."""
CURVE_PICTURE = "report_curve.png"
RELIABILITY_PICTURE = "report_reliability.png"
"""The pictures the report draws itself, beside report.md: the learning curve with the fine-tuned top, and the
chosen head's reliability diagram (from its details.json: the train stages draw no picture, so that a head
swap's train stage imports no matplotlib)."""


# -- reading the stages' outputs -----------------------------------------------------------------------
def read_json(path: Path, stage: str) -> dict:
    if not path.exists():
        raise PipelineError(f"{path} does not exist: run the {stage} stage first (dvc repro)")
    return json.loads(path.read_text())


def read_curve_fits(path: Path) -> list[Fit]:
    """The fits of the learning curve (curve_draws.csv), the fields the summaries use."""
    if not path.exists():
        raise PipelineError(f"{path} does not exist: run the curves stage first (dvc repro)")
    with open(path, newline="") as f:
        return [Fit(r["head"], r["kind"], r["shots"] if r["shots"] == ALL_SHOTS else int(r["shots"]), int(r["draw"]),
                    int(r["n_train"]), float(r["top1"])) for r in csv.DictReader(f)]


@dataclass
class Inputs:
    """Everything the report reads, by the stage that wrote it."""

    comparison: dict
    """comparison.json: rows (each head's metrics.json, with test_without_near_copies, seeds), chosen_on_validation,
    mcnemar (every pair)."""
    details: dict[str, dict]
    """Head name -> its details.json (classes, confusion matrices)."""
    curve_points: list[Point]
    curve_draws: int
    confidence: float
    targets: list[float]
    finetune_curve: dict
    backbones: dict
    """backbones.json, and ``rows`` (each compared backbone's extraction and probe)."""
    seeds: dict
    leakage: dict
    mistakes: dict
    backbone: str
    dataset: str
    folders: dict[str, str]
    """Head name -> its evaluation folder, relative to evaluation/ ("" for the main head)."""


def read_inputs(params: Params, evaluation: Path = layout.EVALUATION) -> Inputs:
    """Every output the report reads, from ``evaluation`` (laid out as :mod:`pipeline.core.layout` says)."""
    def at(path: Path) -> Path:
        return evaluation / path.relative_to(layout.EVALUATION)

    comparison = read_json(at(layout.COMPARISON.with_suffix(".json")), "compare")
    folders = {layout.head_name(k): layout.evaluation_dir(k).relative_to(layout.EVALUATION).as_posix().strip(".")
               for k in params.head_keys()}
    details = {name: read_json(evaluation / folder / layout.DETAILS, "evaluate") for name, folder in folders.items()}
    n_classes = len(next(iter(details.values()))["classes"])
    curves = params.curves
    fits = read_curve_fits(at(layout.CURVE_DRAWS))
    points = summarise(fits, n_classes, curves.confidence)
    backbones = read_json(at(layout.BACKBONES.with_suffix(".json")), "compare-backbones")
    backbones["rows"] = read_rows(backbones["backbones"], at(layout.BACKBONES))
    leakage_summary = at(layout.LEAKAGE_SUMMARY)
    return Inputs(
        comparison=comparison, details=details, curve_points=points,
        curve_draws=max((f.draw + 1 for f in fits), default=0),
        confidence=curves.confidence, targets=curves.targets,
        finetune_curve=read_json(at(layout.CURVES_FINETUNE), "curves-finetune"), backbones=backbones,
        seeds=read_json(at(layout.SEEDS.with_suffix(".json")), "seeds"),
        leakage=read_json(leakage_summary, "leakage") if leakage_summary.exists() else {},
        mistakes=read_json(at(layout.mistakes_files()["data"]), "mistakes"), backbone=params.backbone.name,
        dataset=Path(params.data.source).name.split(".")[0], folders=folders)


# -- formatting ------------------------------------------------------------------------------------------
def pct(x: float, digits: int = 2) -> str:
    return f"{100 * x:.{digits}f}%"


def points_of(x: float) -> str:
    return f"{100 * x:.2f} points"


def p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def seconds_text(s: float) -> str:
    return f"{s:.1f} s" if s < 90 else f"{s / 60:.1f} min"


def a_or_an(word: str) -> str:
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def ece_of(row: dict) -> tuple[float | None, float | None]:
    """(test ECE of the softmax of the raw scores, after the temperature fitted on val); None where absent."""
    test = row["test"]
    return test.get("ece_uncalibrated", test.get("ece")), test.get("ece_calibrated")


def ece_text(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


# -- the document -------------------------------------------------------------------------------------------
@dataclass
class Doc:
    """Blocks: ("h1" | "h2" | "p", text), ("ul", [items]), ("table", header, rows, align), ("img", alt, path).
    Text may hold **bold** and `code`; ``align`` has one letter per column, l (text) or r (figures)."""

    blocks: list[tuple] = field(default_factory=list)

    def add(self, *block) -> None:
        self.blocks.append(block)

    def table(self, header: list[str], rows: list[list], align: str) -> None:
        if len(align) != len(header):
            raise ValueError(f"align {align!r} has {len(align)} letters for {len(header)} columns")
        self.blocks.append(("table", header, rows, align))

    def markdown(self) -> str:
        out = []
        for kind, *rest in self.blocks:
            if kind in ("h1", "h2"):
                out.append(("# " if kind == "h1" else "## ") + rest[0])
            elif kind == "p":
                out.append(rest[0])
            elif kind == "ul":
                out.append("\n".join(f"- {item}" for item in rest[0]))
            elif kind == "table":
                header, rows, align = rest
                out.append("\n".join(["| " + " | ".join(header) + " |",
                                      "| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |",
                                      *("| " + " | ".join(map(str, r)) + " |" for r in rows)]))
            elif kind == "img":
                out.append(f"![{rest[0]}]({rest[1]})")
        return "\n\n".join(out) + "\n"

    def html(self, pictures: dict[str, Path], title: str) -> str:
        body = []
        for kind, *rest in self.blocks:
            if kind in ("h1", "h2"):
                body.append(f"<{kind}>{inline(rest[0])}</{kind}>")
            elif kind == "p":
                body.append(f"<p>{inline(rest[0])}</p>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in rest[0]) + "</ul>")
            elif kind == "table":
                header, rows, align = rest
                head = "".join(f"<th>{inline(h)}</th>" for h in header)
                cells = "".join("<tr>" + "".join(f'<td class="{a}">{inline(str(c))}</td>' for c, a in zip(r, align))
                                + "</tr>" for r in rows)
                body.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table></div>')
            elif kind == "img":
                data = base64.b64encode(pictures[rest[1]].read_bytes()).decode("ascii")
                body.append(f'<figure><img alt="{html.escape(rest[0])}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{html.escape(rest[1])}</figcaption></figure>")
        return PAGE.format(title=html.escape(title), body="\n".join(body))


def inline(text: str) -> str:
    """HTML of a line of text: escaped, with **bold** and `code`."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 980px; margin: 2em auto;
       padding: 0 1em; line-height: 1.5; color: #1f2328; }}
h1 {{ font-size: 1.7em; border-bottom: 1px solid #d0d7de; padding-bottom: .3em; }}
h2 {{ font-size: 1.35em; border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 1.8em; }}
.scroll {{ overflow-x: auto; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: .92em; }}
th, td {{ border: 1px solid #d0d7de; padding: .3em .6em; }}
td.r {{ text-align: right; }}
th {{ background: #f6f8fa; }}
code {{ background: #f6f8fa; padding: .1em .3em; border-radius: 4px; font-size: .9em; }}
figure {{ margin: 1em 0; }}
img {{ max-width: 100%; height: auto; border: 1px solid #eaeef2; }}
figcaption {{ font-size: .8em; color: #57606a; }}
</style>
</head>
<body>
{body}
</body>
</html>
"""


# -- 1. which head ------------------------------------------------------------------------------------------
def by_name(rows: list[dict]) -> dict[str, dict]:
    return {r["name"]: r for r in rows}


def mcnemar_between(pairs: list[dict], a: str, b: str) -> dict:
    for p in pairs:
        if {p["first"], p["second"]} == {a, b}:
            return p
    raise PipelineError(f"comparison.json has no McNemar test of {a} against {b}: run the compare stage again (dvc repro)")


@dataclass
class Choice:
    """The head the report recommends and how it compares with the others it is tested against."""

    head: dict
    on_validation: bool
    tied_with: list[str]
    tests: list[dict]
    """Per head compared: name, role, test top-1, raw p, Holm-adjusted p, whether it differs at ALPHA."""


def choose(comparison: dict) -> Choice:
    rows = comparison["rows"]
    names = by_name(rows)
    ordered = validation_order(rows)
    if not ordered:  # no validation split: nothing chooses without the test set; the main head is reported
        main = names.get("head", rows[0])
        return Choice(main, False, [], [])
    chosen = ordered[0]
    tied = [r["name"] for r in ordered[1:] if held_out_val_top1(r) == held_out_val_top1(chosen)]
    roles: dict[str, list[str]] = {}
    if len(ordered) > 1:
        roles.setdefault(ordered[1]["name"], []).append("the runner-up on validation")
    if "head" in names and chosen["name"] != "head":
        roles.setdefault("head", []).append("the main head")
    raw = {}
    for other in roles:
        raw[other] = mcnemar_between(comparison["mcnemar"], chosen["name"], other)["p_value"]
    adjusted = holm(raw) if raw else {}
    tests = [{"name": o, "role": ", also ".join(roles[o]), "top1": names[o]["test"]["top1"], "p": raw[o],
              "p_holm": adjusted[o], "differs": adjusted[o] < ALPHA} for o in roles]
    return Choice(chosen, True, tied, tests)


def which_head_answer(choice: Choice, n_heads: int) -> str:
    h = choice.head
    test = h["test"]
    figure = f"{pct(test['top1'])} on the test set (95% interval {pct(test['top1_low'])} to {pct(test['top1_high'])})"
    if n_heads == 1:
        return (f"Only the main head is configured: **{h['name']}** ({h['head']}) scores {figure}; add configurations "
                "under `heads:` or `finetune:` to compare.")
    if not choice.on_validation:
        return (f"No head can be chosen without looking at the test set: there is no validation split "
                f"(`data.val_fraction` is 0), so the main head **{h['name']}** ({h['head']}) is reported: {figure}; "
                "set `data.val_fraction` above 0 to choose among the heads.")
    tie = f", tied with {', '.join(choice.tied_with)} and cheaper to fit" if choice.tied_with else ""
    clauses = []
    for t in choice.tests:
        evidence = f"{pct(t['top1'])}, McNemar {p_text(t['p_holm'])} after Holm's correction"
        who = f"{t['role']} {t['name']}" if t["name"] != t["role"].split()[-1] else t["role"]  # not "the main head head"
        if not t["differs"]:
            clauses.append(f"not distinguishable from {who} ({evidence}, alpha {ALPHA})")
        elif test["top1"] > t["top1"]:
            clauses.append(f"above {who} ({evidence})")
        else:
            clauses.append(f"but below {who} on the test set ({evidence}): the choice on validation "
                           "did not hold on test")
    main = ", the main head" if h["name"] == "head" else ""
    return (f"Use **{h['name']}** ({h['head']}{main}): it has the highest validation top-1 "
            f"({pct(held_out_val_top1(h))}){tie}, and it scores {figure}" + ("; " + "; ".join(clauses) if clauses else "") + ".")


def cost_and_calibration(h: dict) -> str:
    raw, calibrated = ece_of(h)
    text = f"Fitting it took {seconds_text(h.get('fit_seconds', float('nan')))}. "
    if calibrated is None:
        return text + (f"Its expected calibration error (ECE) on test is {ece_text(raw)}; no temperature could be "
                       "fitted (it was fitted on the validation split, or there is none).")
    applied = "applied: `calibrate` is true" if "temperature" in h.get("chosen", {}) else "not applied: `calibrate` is false"
    return text + (f"Its expected calibration error (ECE) on test is {ece_text(raw)} from its raw scores and "
                   f"{ece_text(calibrated)} after temperature scaling (T = {h['temperature_on_val']:.3g}, fitted on val; "
                   f"{applied}).")


def which_head_section(doc: Doc, inputs: Inputs, ctx: Context) -> None:
    rows, choice = inputs.comparison["rows"], ctx.choice
    doc.add("p", cost_and_calibration(choice.head))
    header = ["head", "kind", "val top-1", "test top-1 (95% interval)", "fit time", "chosen"]
    table = []
    for r in rows:
        val = held_out_val_top1(r)
        mark = "chosen on validation" if r["name"] == choice.head["name"] and choice.on_validation else ""
        table.append([r["name"], r["head"], "-" if val is None else pct(val),
                      f"{pct(r['test']['top1'])} ({pct(r['test']['top1_low'])} - {pct(r['test']['top1_high'])})",
                      seconds_text(r.get("fit_seconds", float("nan"))), mark])
    doc.table(header, table, "llrrrl")
    if choice.tests:
        doc.add("p", "Paired tests on the same test images (exact McNemar; Holm's correction over the "
                f"{len(choice.tests)} comparison{'s' if len(choice.tests) > 1 else ''}, alpha {ALPHA}):")
        doc.table(["against", "its test top-1", "p", "p after Holm", "differs"],
                [[f"{t['name']} ({t['role']})", pct(t["top1"]), p_text(t["p"]), p_text(t["p_holm"]),
                  "yes" if t["differs"] else "no"] for t in choice.tests], "lrrrl")
    doc.add("img", "test top-1 of every head with its 95% interval", "comparison.png")
    doc.add("p", "Validation figures of swept heads were measured by their sweep before the refit on train + val. "
            "Every head: `evaluation/comparison.md`.")


# -- 2. how many labels ----------------------------------------------------------------------------------------
def finetune_points(inputs: Inputs, n_classes: int, k_all: float | None) -> list[Point]:
    """The fine-tuned top's curve as points (with a t-interval over its draws when there are several), and its
    full-data figure at k = all."""
    curve = inputs.finetune_curve
    if curve.get("skipped") or not curve.get("points"):
        return []
    name = f"{curve['name']} (fine-tuned)"
    points = []
    for k in dict.fromkeys(p["shots"] for p in curve["points"]):
        mine = [p for p in curve["points"] if p["shots"] == k]
        mean, std, low, high = t_interval([p["top1"] for p in mine], inputs.confidence)
        points.append(Point(name, k, float(k), len(mine), mine[0]["n_train"], mean, std, low, high))
    full = by_name(inputs.comparison["rows"]).get(curve["name"])
    if full is not None and k_all is not None:
        points.append(Point(name, ALL_SHOTS, k_all, 1, k_all * n_classes, full["test"]["top1"], None, None, None))
    return points


def labels_answer(inputs: Inputs, ft: list[Point]) -> str:
    points = inputs.curve_points
    head = points[0].head
    full = next((p for p in points if p.head == head and p.shots == ALL_SHOTS), None)
    if full is None:
        return (f"The learning curve has no full-data point (`all` is not in `curves.shots`), so the labels needed for a "
                f"share of the full-data figure are not computed; {head}'s curve is in the table below.")
    needs = []
    for i, target in enumerate(inputs.targets):
        shots, estimate = labels_needed(points, head, target)
        unit = " labelled images per class" if i == 0 else ""
        needs.append(f"about {estimate:.0f}{unit} to reach {round(100 * target)}%" if shots is not None
                     else f"more than the curve measures to reach {round(100 * target)}%")
    text = f"On frozen features, {head} needs " + " and ".join(needs) + f" of its full-data test top-1 ({pct(full.mean)})"
    curve = inputs.finetune_curve
    if curve.get("skipped"):
        return text + "; no fine-tuned top is configured (`finetune:` is empty), so the curve covers frozen heads only."
    if not ft:
        return text + "; the fine-tuned top has no point below the full training set (every k of `curves_finetune.shots` is as large as the classes)."
    best = best_heads(points)
    at = []
    for p in ft:
        if p.shots == ALL_SHOTS:
            continue
        frozen = best.get(str(p.shots))
        against = f" against {pct(frozen['top1'])} for the best frozen head ({frozen['head']})" if frozen else ""
        at.append(f"{pct(p.mean)} at k = {p.shots}{against}")
    draws = curve["draws"]
    spread = "one draw each, so no interval" if draws == 1 else f"mean of {draws} draws"
    full_ft = next((p.mean for p in ft if p.shots == ALL_SHOTS), None)
    tail = f", and {pct(full_ft)} with every training label" if full_ft is not None else ""
    return (text + f"; the fine-tuned top ({curve['name']}) scores " + ", ".join(at) + f" ({spread}){tail}; those "
            f"fits cost {seconds_text(curve['seconds'])} on {curve['machine'].split(';')[0]}.")


def labels_section(doc: Doc, inputs: Inputs, ctx: Context) -> None:
    points, ft = inputs.curve_points, ctx.finetune
    heads = list(dict.fromkeys(p.head for p in points))
    ft_name = ft[0].head if ft else None
    ks = list(dict.fromkeys([p.shots for p in points if p.shots != ALL_SHOTS] + [p.shots for p in ft if p.shots != ALL_SHOTS]))
    ks = sorted(ks) + ([ALL_SHOTS] if any(p.shots == ALL_SHOTS for p in points + ft) else [])
    table = []
    for k in ks:
        row = {p.head: p for p in points + ft if p.shots == k}
        cells = []
        for h in heads + ([ft_name] if ft_name else []):
            p = row.get(h)
            cells.append("-" if p is None else pct(p.mean) + (f" ± {100 * (p.high - p.mean):.2f}" if p.high is not None else ""))
        table.append([str(k), *cells])
    pct_conf = round(100 * inputs.confidence)
    doc.add("p", f"Test top-1 with k labelled training images per class: frozen heads, mean of {inputs.curve_draws} "
            f"draws ± the half-width of the {pct_conf}% t-interval; the fine-tuned top: "
            + ("not configured." if not ft else f"{inputs.finetune_curve['draws']} draw(s), the same images as the "
               "frozen heads' first draw(s), with at least "
               f"{inputs.finetune_curve['min_steps']} optimiser steps; at `all`, its own evaluation."))
    doc.table(["k", *heads, *([ft_name] if ft_name else [])], table, "r" * (1 + len(heads) + bool(ft_name)))
    doc.add("img", "learning curve, with the fine-tuned top", CURVE_PICTURE)
    doc.add("p", "Protocol: `docs/learning-curves.md`; every fit: `evaluation/curve_draws.csv`"
            + (", `evaluation/curves_finetune.json`." if ft else "."))


# -- 3. which backbone --------------------------------------------------------------------------------------------
def backbone_answer(inputs: Inputs, n_test: int) -> str:
    b = inputs.backbones
    rows = b.get("rows", [])
    if not rows:
        return (f"Not measured: only {inputs.backbone} was run; to compare backbones on this data, run "
                "`dvc exp run -S 'backbones.compare=[lite0,lite1,lite2,random]'` (`docs/backbones.md`).")
    ref = b["reference"]
    ranked = sorted(rows, key=lambda r: -r["heads"][ref]["test_top1"])
    first = ranked[0]
    top1 = first["heads"][ref]["test_top1"]
    text = f"**{first['name']}** ({first['backbone']}) gives the highest {ref} test top-1, {pct(top1)}"
    if len(ranked) > 1:
        second = ranked[1]
        other = second["heads"][ref]["test_top1"]
        low, _ = wilson_interval(round(top1 * n_test), n_test)
        _, high = wilson_interval(round(other * n_test), n_test)
        apart = "their 95% intervals do not overlap" if low > high else "within each other's 95% intervals: not clearly better"
        lead = f"tied with {second['name']}" if top1 == other else f"{points_of(top1 - other)} above {second['name']} ({pct(other)}; {apart})"
        text += (f", {lead}, extracting at {first['images_per_second']:.0f} images/s against "
                 f"{second['images_per_second']:.0f}")
        tau = b["agreement"].get("logme", {}).get("kendall_tau")
        if tau is not None:
            pairs = len(rows) * (len(rows) - 1) // 2
            text += (f"; LogME ranks the {len(rows)} backbones with Kendall's tau {tau:+.2f} against that order "
                     f"({pairs} pair{'s' if pairs > 1 else ''}: one swapped pair moves tau by {2 / pairs:.2f})")
    return text + "."


def backbone_section(doc: Doc, inputs: Inputs, ctx: Context) -> None:
    b = inputs.backbones
    if not b.get("rows"):
        return
    ref = b["reference"]
    doc.table(["backbone", "model", f"{ref} test top-1", "LogME", "extraction images/s"],
            [[r["name"], r["backbone"], pct(r["heads"][ref]["test_top1"]), f"{r['logme']:.3f}",
              f"{r['images_per_second']:.1f}"] for r in sorted(b["rows"], key=lambda r: -r["heads"][ref]["test_top1"])],
              "llrrr")
    doc.add("img", "backbones: accuracy against cost, against LogME, learning curves", "backbones.png")
    doc.add("p", "Every figure and the rank agreements: `evaluation/backbones.md`.")


# -- 4. how far to trust it --------------------------------------------------------------------------------------
def trust_answer(inputs: Inputs, h: dict) -> str:
    test = h["test"]
    half = (test["top1_high"] - test["top1_low"]) / 2
    text = (f"{h['name']}'s test top-1 of {pct(test['top1'])} is known to about ± {100 * half:.1f} points (95% "
            f"interval over {test['n']} test images)")
    seeds = inputs.seeds
    spread = h.get("seeds")
    if spread is not None:
        text += f"; refit with {spread['n']} seeds it scores {pct(spread['mean'])} ± {100 * spread['sd']:.2f} points (sd)"
    elif seeds.get("seeds"):
        text += f"; its spread over seeds was not measured (`seeds.configurations` repeats {', '.join(c['name'] for c in seeds['configurations'].values())})"
    else:
        text += "; the spread over seeds was not measured (`seeds.values` is empty)"
    rows = inputs.comparison["rows"]
    removed = inputs.leakage.get("test_removed")
    if removed is not None and all("test_without_near_copies" in r for r in rows):
        if removed == 0:
            text += "; no test image has a near-copy among the training or validation images"
        else:
            shift = max(abs(r["test_without_near_copies"]["top1"] - r["test"]["top1"]) for r in rows)
            text += (f"; {removed} test image{'s have' if removed > 1 else ' has'} a near-copy among the training or "
                     f"validation images, and without them no head's top-1 moves by more than {points_of(shift)}")
        if possible := _possible(inputs):
            shift = max(abs(r["test_without_possible_copies"]["top1"] - r["test"]["top1"]) for r in rows)
            text += (f"; {possible} more {'have' if possible > 1 else 'has'} a possible one (a pair just below the "
                     f"decision, where copies and look-alikes overlap), and without those too no head's top-1 moves "
                     f"by more than {points_of(shift)}")
        if note := plain_background_note(inputs.leakage):
            text += f"; {note}"
    raw, calibrated = ece_of(h)
    if calibrated is not None:
        text += f"; its calibration error (ECE) is {ece_text(raw)} raw and {ece_text(calibrated)} after temperature scaling"
    return text + "."


def _possible(inputs: Inputs) -> int:
    """The test images with a possible near-copy only (0 without a band, or when compare did not score without them)."""
    rows = inputs.comparison["rows"]
    has = all("test_without_possible_copies" in r for r in rows)
    return inputs.leakage.get("test_possible", 0) if has else 0


def trust_section(doc: Doc, inputs: Inputs, ctx: Context) -> None:
    rows, h = inputs.comparison["rows"], ctx.choice.head
    clean = all("test_without_near_copies" in r for r in rows)
    cleaner = clean and _possible(inputs) > 0
    seeded = any("seeds" in r for r in rows)
    header = ["head", "test top-1"] + (["without near-copies", "change"] if clean else []) + \
             (["and without possible ones", "change"] if cleaner else []) + \
             (["over seeds: mean ± sd"] if seeded else []) + ["ECE raw", "ECE after temperature"]
    table = []
    for r in rows:
        cells = [r["name"], pct(r["test"]["top1"])]
        for key in ["test_without_near_copies"] * clean + ["test_without_possible_copies"] * cleaner:
            cells += [pct(r[key]["top1"]), f"{100 * (r[key]['top1'] - r['test']['top1']):+.2f}"]
        if seeded:
            s = r.get("seeds")
            cells += ["-" if s is None else f"{pct(s['mean'])} ± {100 * s['sd']:.2f} ({s['n']} seeds)"]
        cells += [ece_text(v) for v in ece_of(r)]
        table.append(cells)
    doc.table(header, table, "l" + "r" * (len(header) - 1))
    bound = ("Without possible ones: also without the test images whose best pair is just below the decision "
             "(`leakage.possible_margin`), where copies and look-alikes overlap: the two figures bound what the copies "
             "could change (docs/leakage.md). " if cleaner else "")
    doc.add("p", bound + "ECE: expected calibration error of the top-1 probability on test (15 bins); after temperature: "
            "the scores divided by one temperature fitted on the validation split (`calibrate: true` applies it).")
    if inputs.leakage:
        doc.add("img", "the closest pairs between the splits", "leakage/pairs.png")
    doc.add("img", f"reliability of {h['name']}: calibration of its probabilities on test", RELIABILITY_PICTURE)


# -- 5. where it fails ----------------------------------------------------------------------------------------------
def confused_pairs(details: dict, n: int = 5) -> list[tuple[str, str, int, int]]:
    """The class pairs most often taken for each other on test (both directions): (a, b, count, images of a and b)."""
    cm, classes = details["test"]["confusion_matrix"], details["classes"]
    support = [sum(row) for row in cm]
    pairs = [(classes[i], classes[j], cm[i][j] + cm[j][i], support[i] + support[j])
             for i in range(len(classes)) for j in range(i + 1, len(classes))]
    return sorted((p for p in pairs if p[2] > 0), key=lambda p: -p[2])[:n]


def mistakes_role(inputs: Inputs, name: str) -> str:
    """The mistakes stage's role (main, best) whose pictures show head ``name``; ``best`` when neither is it."""
    return next((role for role in ("main", "best") if inputs.mistakes[role]["name"] == name), "best")


def fails_answer(inputs: Inputs, h: dict) -> str:
    pairs = confused_pairs(inputs.details[h["name"]])
    if not pairs:
        return f"{h['name']} makes no mistake on the {h['test']['n']} test images."
    wrong = sum(row[j] for i, row in enumerate(inputs.details[h["name"]]["test"]["confusion_matrix"])
                for j in range(len(row)) if i != j)
    a, b, count, _ = pairs[0]
    text = (f"{h['name']} most often confuses {a} and {b} ({count} test images, both directions: "
            f"{count / wrong:.0%} of its {wrong} mistakes)")
    if len(pairs) > 1:
        text += ", then " + ", ".join(f"{x} and {y} ({c})" for x, y, c, _ in pairs[1:3])
    role = mistakes_role(inputs, h["name"])
    m = inputs.mistakes[role]
    if m["worst"]:
        w = m["worst"][0]
        whose = "its" if m["name"] == h["name"] else f"{m['name']}'s (the head with the highest test top-1)"
        text += (f"; {whose} most confident mistake is {a_or_an(w['actual'])} taken for {a_or_an(w['predicted'])} with "
                 f"probability {w['confidence']:.2f}")
    return text + "."


def fails_section(doc: Doc, inputs: Inputs, ctx: Context) -> None:
    h = ctx.choice.head
    pairs = confused_pairs(inputs.details[h["name"]])
    if pairs:
        doc.table(["classes", "taken for each other", "share of the two classes' test images"],
                  [[f"{a} / {b}", str(c), f"{c / n:.1%} of {n}"] for a, b, c, n in pairs], "lrr")
    role = mistakes_role(inputs, h["name"])
    who = inputs.mistakes[role]["name"]
    doc.add("img", f"most confused classes of {who}", f"mistakes/{role}_confused.png")
    doc.add("img", f"most confident mistakes of {who}", f"mistakes/{role}_worst.png")
    doc.add("p", "Every mistake pictured, with its image id: `evaluation/mistakes/mistakes.md`.")


# -- the whole report ------------------------------------------------------------------------------------------
@dataclass
class Context:
    """What the sections share: the head chosen and the fine-tuned top's curve as points."""

    choice: Choice
    finetune: list[Point]


SECTIONS = {"Which head": which_head_section, "How many labels": labels_section, "Which backbone": backbone_section,
            "How far to trust it": trust_section, "Where it fails": fails_section}
"""The five sections, in order, and the function that writes each one's evidence."""


def answers_of(inputs: Inputs, ctx: Context) -> dict[str, str]:
    """The one-sentence answer of each section."""
    h = ctx.choice.head
    return dict(zip(SECTIONS, [which_head_answer(ctx.choice, len(inputs.comparison["rows"])),
                               labels_answer(inputs, ctx.finetune), backbone_answer(inputs, h["test"]["n"]),
                               trust_answer(inputs, h), fails_answer(inputs, h)]))


def build(inputs: Inputs) -> tuple[Doc, dict[str, str], dict[str, Drawing]]:
    """The document, its five answers by section, and the pictures it draws itself."""
    choice = choose(inputs.comparison)
    h = choice.head
    n_classes = len(inputs.details[h["name"]]["classes"])
    k_all = next((p.k for p in inputs.curve_points if p.shots == ALL_SHOTS), None)
    ctx = Context(choice, finetune_points(inputs, n_classes, k_all))
    answers = answers_of(inputs, ctx)
    doc = Doc()
    doc.add("h1", f"Report: {inputs.dataset}, {inputs.backbone}")
    doc.add("p", f"{n_classes} classes, {h['test']['n']} test images. Written by the report stage from the pipeline's "
            "outputs in `evaluation/`; each section opens with its answer, computed from the figures below it.")
    doc.add("ul", [f"**{title}**: {answer}" for title, answer in answers.items()])
    for title, write in SECTIONS.items():
        doc.add("h2", title)
        doc.add("p", answers[title])
        write(doc, inputs, ctx)
    return doc, answers, drawings(inputs, h, inputs.curve_points + ctx.finetune)


Drawing = tuple[object, Callable[[Path], None]]
"""A picture the report draws: what it is drawn from (JSON-able: its fingerprint) and the function drawing it."""


def drawings(inputs: Inputs, head: dict, points: list[Point]) -> dict[str, Drawing]:
    """The learning curve of ``points`` and the reliability diagram of ``head``, by file name."""
    curve_title = f"test top-1 against labels per class ({inputs.backbone} features)"
    stats = inputs.details[head["name"]]["reliability"]
    reliability_title = f"{head['name']} ({head['head']}), test top-1 {head['test']['top1']:.3f}"
    if stats.get("temperature") is not None:
        reliability_title += f"\ncalibrated: temperature {stats['temperature']:.3g}"
    return {
        CURVE_PICTURE: ([[asdict(p) for p in points], curve_title], lambda path: plot_curve(points, path, curve_title)),
        RELIABILITY_PICTURE: ([stats, reliability_title], lambda path: plot_reliability(
            stats["test"], path, reliability_title, before=stats.get("uncalibrated"),
            after=stats.get("with_temperature_on_val"))),
    }


def drawn_from(picture: Path) -> str | None:
    """The fingerprint a picture of :func:`mark_drawn_from` records (None: no picture, or none recorded)."""
    from PIL import Image

    try:
        with Image.open(picture) as image:
            return image.text.get("fingerprint")
    except (OSError, AttributeError):
        return None


def mark_drawn_from(picture: Path, fingerprint: str) -> None:
    """Record in a PNG what it was drawn from (a text chunk), so that it need not be drawn again."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("fingerprint", fingerprint)
    with Image.open(picture) as image:
        image.load()
        image.save(picture, pnginfo=info)


def write(inputs: Inputs, evaluation: Path, stem: Path) -> dict[str, str]:
    """Write ``<stem>.md``, ``<stem>.html`` and the pictures the report draws beside them (each drawn again only
    when what it shows changed), as one set; the other pictures are read from ``evaluation`` (the folder the
    Markdown's links are relative to). Returns the answers."""
    doc, answers, drawn = build(inputs)
    wanted = [b[2] for b in doc.blocks if b[0] == "img" and b[2] not in drawn]
    missing = [p for p in wanted if not (evaluation / p).exists()]
    if missing:
        raise PipelineError(f"the report shows pictures that do not exist: {', '.join(str(evaluation / p) for p in missing)}; "
                            "run the stages that draw them (dvc repro)")
    title = f"Report: {inputs.dataset}, {inputs.backbone}"
    with atomic_files(stem.parent) as staging:
        pictures = {p: evaluation / p for p in wanted}
        for name, (source, draw) in drawn.items():
            fingerprint, pictures[name] = sha256_json(source), stem.parent / name
            if drawn_from(pictures[name]) != fingerprint:  # as drawn before (the curve, on a head swap): kept
                pictures[name] = staging / name
                draw(pictures[name])
                mark_drawn_from(pictures[name], fingerprint)
        (staging / f"{stem.name}.md").write_text(doc.markdown())
        (staging / f"{stem.name}.html").write_text(doc.html(pictures, title))
    return answers
