"""The report: its sentences against the figures of small real runs (every stage run for real on real images and
real networks), the page opened in headless Chromium with the network blocked, and the comparison chart."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import binomtest

from pipeline.core import layout
from pipeline.reports.report import seconds_text
from tests.conftest import CHROMIUM, chromium_dom, with_section

QUICK_CURVE = {"shots": [2, 4], "draws": 1, "min_steps": 4}


def run_all(out: Path, params, pooled: Path, cut: Path | None, splits: Path) -> Path:
    """Every stage the report reads, run for real into ``out/evaluation``; then the report. Returns the folder."""
    from pipeline.stages import (
        compare,
        compare_backbones,
        curves,
        curves_finetune,
        evaluate,
        leakage,
        mistakes,
        report,
        seeds,
        train,
    )

    ev = out / "evaluation"

    def at(path: Path) -> Path:
        return ev / path.relative_to(layout.EVALUATION)

    dirs = {}
    for key in params.head_keys():
        features = cut if params.head_config(key).params.input == "cut" else pooled
        head_file = out / layout.head_file(key)
        train.run(params, features, splits, head_file, key)
        dirs[key] = at(layout.evaluation_dir(key))
        evaluate.run(features, head_file, dirs[key], layout.head_name(key))
    leakage.run(params, pooled, splits, at(layout.LEAKAGE))
    for seed in params.seeds.values:  # the seed stages, then compare's gathering of them
        seeds.run(params, {"pooled": pooled, "cut": cut}, splits, seed, at(layout.seed_fits_file(seed)))
    compare.gather_seeds(params, at(layout.SEED_FITS), at(layout.SEEDS))
    compare.run([d / layout.METRICS for d in dirs.values()], at(layout.COMPARISON), at(layout.LEAKAGE_PAIRS),
                at(layout.SEEDS).with_suffix(".json"))
    mistakes.run(params.mistakes, splits, dirs, {k: at(p) for k, p in layout.mistakes_files().items()})
    curves.run(params, pooled, splits, at(layout.CURVES), at(layout.CURVE_DRAWS))
    curves_finetune.run(params, cut, splits, at(layout.CURVES_FINETUNE))
    compare_backbones.run(params.backbones.compare, params.backbones.reference, at(layout.BACKBONES), at(layout.BACKBONES))
    report.run(params, ev, at(layout.REPORT))
    return ev


def answers(ev: Path) -> dict[str, str]:
    """The five answers, as the Markdown states them: the first paragraph under each section heading."""
    text = (ev / "report.md").read_text()
    return {m.group(1): m.group(2) for m in re.finditer(r"^## (.+)\n\n(.+)$", text, flags=re.M)}


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def correct(ev_dir: Path) -> dict[str, bool]:
    with open(ev_dir / "test_predictions.csv", newline="") as f:
        return {r["id"]: r["actual"] == r["predicted"] for r in csv.DictReader(f)}


def metrics_of(ev: Path) -> dict[str, tuple[dict, Path]]:
    """Head name -> (its metrics.json, its folder), read from the evaluate stages' files."""
    out = {}
    for path in [ev / "metrics.json", *ev.glob("heads/*/metrics.json"), *ev.glob("finetune/*/metrics.json")]:
        m = json.loads(path.read_text())
        out[m["name"]] = (m, path.parent)
    return out


@pytest.fixture(scope="module")
def full_run(caches, tmp_path_factory):
    """Every head kind and the fine-tuned top on real (ResNet-18, random init) features of 3 CIFAR-10 classes."""
    out, params = caches
    params = with_section(params, "curves_finetune", **QUICK_CURVE)
    run_dir = tmp_path_factory.mktemp("report")
    return run_all(run_dir, params, out / "pooled.h5", out / "cut.h5", out / "splits.json"), params


def test_the_head_is_chosen_on_validation_and_compared_with_holm(full_run):
    ev, _ = full_run
    heads = metrics_of(ev)
    answer = answers(ev)["Which head"]
    val = {name: m["val"]["top1"] for name, (m, _) in heads.items() if "top1" in m.get("val", {})}
    best_val = max(val.values())
    tied = [n for n, v in val.items() if v == best_val]
    chosen = min(tied, key=lambda n: heads[n][0]["fit_seconds"])
    m, folder = heads[chosen]
    main = ", the main head" if chosen == "head" else ""
    assert answer.startswith(f"Use **{chosen}** ({m['head']}{main}): it has the highest validation top-1 ({pct(best_val)})")
    assert f"scores {pct(m['test']['top1'])} on the test set" in answer
    # the comparisons, recomputed here from the test predictions: exact McNemar, Holm over the heads compared
    ranked = sorted(val, key=lambda n: (-val[n], heads[n][0]["fit_seconds"]))
    compared = list(dict.fromkeys([ranked[1]] + (["head"] if chosen != "head" else [])))
    mine = correct(folder)
    p = {}
    for other in compared:
        theirs = correct(heads[other][1])
        b = sum(mine[i] and not theirs[i] for i in mine)
        c = sum(theirs[i] and not mine[i] for i in mine)
        p[other] = 1.0 if b + c == 0 else binomtest(min(b, c), b + c, 0.5).pvalue
    order = sorted(p, key=p.get)
    adjusted = {}
    for i, name in enumerate(order):
        adjusted[name] = max([min(1.0, (len(order) - j) * p[order[j]]) for j in range(i + 1)])
    for other in compared:
        if adjusted[other] >= 0.05:
            assert re.search(rf"not distinguishable from [^;]*{re.escape(other)} \({re.escape(pct(heads[other][0]['test']['top1']))}", answer), other
        else:
            assert re.search(rf"(above|below) [^;]*{re.escape(other)}", answer), other
    # the chart marks that head; comparison.json records the same choice
    assert json.loads((ev / "comparison.json").read_text())["chosen_on_validation"] == chosen


def test_the_labels_answer_states_the_curve_and_the_fine_tuned_points(full_run):
    ev, params = full_run
    answer = answers(ev)["How many labels"]
    with open(ev / "curve_draws.csv", newline="") as f:
        fits = [r for r in csv.DictReader(f) if r["head"] == "logistic"]
    means = {}
    for r in fits:
        means.setdefault(r["shots"], []).append(float(r["top1"]))
    means = {k: float(np.mean(v)) for k, v in means.items()}
    full = means.pop("all")
    ks = sorted(means, key=int)
    for target, unit in ((0.9, " labelled images per class"), (0.95, "")):
        goal = target * full
        reached = [k for k in ks if means[k] >= goal]
        if reached:
            k = reached[0]
            i = ks.index(k)
            if i == 0:
                estimate = float(k)
            else:
                q = ks[i - 1]
                share = (goal - means[q]) / (means[k] - means[q])
                estimate = math.exp(math.log(int(q)) + share * (math.log(int(k)) - math.log(int(q))))
        else:  # reached only with every label: between the largest k and the whole split
            n_train = int(next(r["n_train"] for r in csv.DictReader(open(ev / "curve_draws.csv")) if r["shots"] == "all"))
            k_all, q = n_train / 3, ks[-1]
            share = (goal - means[q]) / (full - means[q])
            estimate = math.exp(math.log(int(q)) + share * (math.log(k_all) - math.log(int(q))))
        assert f"about {estimate:.0f}{unit} to reach {round(100 * target)}%" in answer
    assert f"of its full-data test top-1 ({pct(full)})" in answer
    curve = json.loads((ev / "curves_finetune.json").read_text())
    assert [p["shots"] for p in curve["points"]] == [2, 4] and curve["config"] == "finetune.top"
    for point in curve["points"]:
        assert point["steps"] >= 4 and point["n_train"] == 3 * point["shots"]
        assert f"{pct(point['top1'])} at k = {point['shots']}" in answer
    assert "the fine-tuned top (top) scores" in answer
    assert "(one draw each, so no interval)" in answer
    assert f"those fits cost {seconds_text(curve['seconds'])} on" in answer  # s, or min past 90 s


def test_trust_and_failure_answers_state_the_figures(full_run):
    ev, _ = full_run
    said = answers(ev)
    chosen = json.loads((ev / "comparison.json").read_text())["chosen_on_validation"]
    heads = metrics_of(ev)
    m, folder = heads[chosen]
    trust = said["How far to trust it"]
    half = 100 * (m["test"]["top1_high"] - m["test"]["top1_low"]) / 2
    assert trust.startswith(f"{chosen}'s test top-1 of {pct(m['test']['top1'])} is known to about ± {half:.1f} points")
    assert "the spread over seeds was not measured (`seeds.values` is empty)" in trust
    leakage = json.loads((ev / "leakage" / "summary.json").read_text())
    removed, possible = leakage["test_removed"], leakage["test_possible"]
    assert (f"{removed} test image" in trust) if removed else ("no test image has a near-copy" in trust)
    rows = json.loads((ev / "comparison.json").read_text())["rows"]
    shift = max(abs(r["test_without_possible_copies"]["top1"] - r["test"]["top1"]) for r in rows)
    bound = f"{possible} more {'have' if possible > 1 else 'has'} a possible one"
    assert (f"{bound} (a pair just below the decision" in trust and f"moves by more than {100 * shift:.2f}" in trust
            ) if possible else "possible" not in trust
    if "ece_calibrated" in m["test"]:
        assert f"{m['test']['ece_calibrated']:.3f} after temperature scaling" in trust
    # the most confused pair, counted here from the test predictions
    with open(folder / "test_predictions.csv", newline="") as f:
        wrong = [frozenset((r["actual"], r["predicted"])) for r in csv.DictReader(f) if r["actual"] != r["predicted"]]
    fails = said["Where it fails"]
    if not wrong:
        assert "makes no mistake" in fails
    else:
        counts = {pair: wrong.count(pair) for pair in set(wrong)}
        top = max(counts.values())
        assert any(re.search(rf"confuses ({a} and {b}|{b} and {a}) \({top} test images", fails)
                   for a, b in (sorted(p) for p, c in counts.items() if c == top)), fails
    assert said["Which backbone"].startswith("Not measured: only resnet18 was run")


def test_evaluate_fits_a_temperature_for_every_head_with_a_held_out_val(full_run, caches):
    """Calibrated ECE beside the raw one for every head with a validation split it was not fitted on, equal to the
    temperature fitted on val applied to the test scores; the predictions and the head's own ECE unchanged
    (calibrate: false)."""
    from pipeline.heads.base import load_head, softmax, split_scores
    from pipeline.heads.calibration import fit_temperature
    from pipeline.heads.metrics import calibration
    from pipeline.store.features import FeatureStore

    ev, _ = full_run
    for name, (m, _) in metrics_of(ev).items():
        if "top1" in m.get("val", {}) and m["val"].get("on") == "val":
            assert m["temperature_on_val"] > 0 and 0 <= m["test"]["ece_calibrated"] <= 1, name
            assert "temperature" not in m["chosen"] and "ece_uncalibrated" not in m["test"], name
    head, _ = load_head(ev.parent / layout.head_file("head"))
    with FeatureStore(caches[0] / "pooled.h5") as store:
        (val, y_val), (test, y_test) = split_scores(head, store, "val"), split_scores(head, store, "test")
    m = json.loads((ev / "metrics.json").read_text())
    t = fit_temperature(val, y_val)
    assert m["temperature_on_val"] == pytest.approx(t, rel=1e-9)
    assert m["test"]["ece_calibrated"] == pytest.approx(calibration(softmax(test / t), y_test)["ece"], abs=1e-12)
    assert m["test"]["ece"] == pytest.approx(calibration(softmax(test), y_test)["ece"], abs=1e-12)


def test_markdown_links_every_picture_and_the_html_embeds_them(full_run):
    ev, _ = full_run
    md = (ev / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert "comparison.png" in links and "report_curve.png" in links and "leakage/pairs.png" in links
    assert all((ev / link).exists() and not link.startswith(("/", "http")) for link in links)
    page = (ev / "report.html").read_text()
    sources = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(sources) == len(links) and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"(src|href)=\"(?!data:)", page) and "http" not in page.split("<body>")[1]
    assert md.count("\n## ") == 5


def test_the_curve_picture_is_drawn_again_only_when_its_points_change(full_run, tmp_path):
    """A head swap re-runs the report, not the curve: the picture (a persistent output) stays as drawn."""
    from pipeline.stages import report as report_stage

    ev, params = full_run
    picture = ev / "report_curve.png"
    before = (picture.stat().st_ino, picture.read_bytes())
    report_stage.run(params, ev, ev / layout.REPORT.name)
    assert (picture.stat().st_ino, picture.read_bytes()) == before  # the same file: not drawn again
    (ev / "report.md").unlink()
    curve = ev / "curve_draws.csv"  # every fit of the curve: what the report's points are computed from
    kept = curve.read_text()
    fits = list(csv.DictReader(kept.splitlines()))
    fits[0]["top1"] = str(float(fits[0]["top1"]) / 2)
    with open(curve, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fits[0]))
        writer.writeheader()
        writer.writerows(fits)
    try:
        report_stage.run(params, ev, ev / layout.REPORT.name)
        assert picture.read_bytes() != before[1]  # a point moved: drawn again
    finally:
        curve.write_text(kept)
        report_stage.run(params, ev, ev / layout.REPORT.name)


def test_a_tie_is_reported_as_a_tie(cifar_folder, caches, tmp_path):
    """Three identical ridge heads: tied on validation, the cheaper fit chosen, and no difference claimed."""
    out, params = caches
    raw = params.model_dump()
    raw.update(head={"kind": "ridge"}, heads={"ridge-a": {"kind": "ridge"}, "ridge-b": {"kind": "ridge"}}, finetune={},
               curves_finetune={}, curves={**raw["curves"], "draws": 2})
    from pipeline.core.config import parse_params

    params = parse_params(raw)
    ev = run_all(tmp_path, params, out / "pooled.h5", out / "cut.h5", out / "splits.json")
    answer = answers(ev)["Which head"]
    assert re.search(r"tied with [\w, -]+ and cheaper to fit", answer), answer
    # which of the three is cheapest is measured, so any order: the main head chosen, or the main head the
    # runner-up (one test, both roles), take one McNemar test; another head chosen over another, two
    one_test = "Use **head**" in answer or "the runner-up on validation, also the main head" in answer
    assert answer.count("not distinguishable from") == (1 if one_test else 2), answer
    assert " above " not in answer and " below " not in answer
    assert "McNemar p = 1 after Holm's correction" in answer
    labels = answers(ev)["How many labels"]
    assert "no fine-tuned top is configured (`finetune:` is empty)" in labels


@pytest.fixture(scope="module")
def plain_colours(tmp_path_factory) -> Path:
    """Another dataset: noisy plain-colour images of two classes, 12 train and 6 test each."""
    folder = tmp_path_factory.mktemp("plain") / "images"
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 6)):
        for cls, colour in (("sky", (70, 130, 220)), ("grass", (60, 170, 60))):
            for i in range(n):
                pixels = np.clip(np.array(colour) + rng.normal(0, 40, (40, 48, 3)), 0, 255).astype(np.uint8)
                path = folder / split / cls / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)
    return folder


def run_plain(folder: Path, tmp_path: Path, **raw) -> tuple[Path, dict]:
    from pipeline.core.config import parse_params
    from pipeline.stages import extract, prepare

    params = parse_params({
        "data": {"source": str(folder), "val_fraction": 0.25},
        "backbone": {"name": "resnet18", "weights": None, "input_size": 64, "batch_size": 8, "cut": None},
        "heads": {}, "finetune": {}, "curves": {"draws": 2}, **raw})
    prepare.run(params, tmp_path / "splits.json")
    extract.run(params, tmp_path / "splits.json", tmp_path / "pooled.h5", tmp_path / "cut.h5", progress=False)
    ev = run_all(tmp_path, params, tmp_path / "pooled.h5", tmp_path / "cut.h5", tmp_path / "splits.json")
    return ev, answers(ev)


def test_another_dataset_with_two_classes_and_no_other_head(plain_colours, tmp_path):
    """Plain-colour images of two classes, one head, no fine-tuning, no cut: every section still answers."""
    ev, said = run_plain(plain_colours, tmp_path)
    m = json.loads((ev / "metrics.json").read_text())
    assert said["Which head"] == (f"Only the main head is configured: **head** (logistic) scores {pct(m['test']['top1'])} on "
                                  f"the test set (95% interval {pct(m['test']['top1_low'])} to {pct(m['test']['top1_high'])}); "
                                  "add configurations under `heads:` or `finetune:` to compare.")
    assert "no fine-tuned top is configured" in said["How many labels"]
    cm = json.loads((ev / "details.json").read_text())["test"]["confusion_matrix"]
    wrong = cm[0][1] + cm[1][0]
    assert (f"confuses grass and sky ({wrong} test images" in said["Where it fails"]) if wrong else \
        said["Where it fails"] == "head makes no mistake on the 12 test images."
    assert "2 classes, 12 test images" in (ev / "report.md").read_text()


def test_without_a_validation_split_no_head_is_chosen(plain_colours, tmp_path):
    """data.val_fraction 0: nothing can be chosen without the test set; the main head is reported, no head is
    marked on the chart, and no temperature is fitted."""
    ev, said = run_plain(plain_colours, tmp_path, data={"source": str(plain_colours), "val_fraction": 0.0},
                         heads={"ridge": {"kind": "ridge"}})
    assert said["Which head"].startswith("No head can be chosen without looking at the test set: there is no validation "
                                         "split (`data.val_fraction` is 0), so the main head **head** (logistic) is reported")
    assert json.loads((ev / "comparison.json").read_text())["chosen_on_validation"] is None
    assert "ece_calibrated" not in json.loads((ev / "metrics.json").read_text())["test"]
    assert "after temperature scaling" not in said["How far to trust it"]


# -- the page in headless Chromium, network blocked -------------------------------------------------------
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images].map(i => i.complete && i.naturalWidth > 0);
  const requests = performance.getEntriesByType("resource").map(e => e.name);
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({images, requests});
  document.body.appendChild(out);
});
</script>"""


def probe(page: Path, profile: Path, screenshot: Path | None = None) -> dict:
    """Open ``page`` (a copy with a probe script) in headless Chromium with every host name unresolvable and
    return which images loaded and which requests the page made."""
    probed = page.with_name(page.stem + ".probed.html")
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    if screenshot is not None:
        chromium_dom(page, profile, screenshot, height=4000)
    dom = chromium_dom(probed, profile)
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, flags=re.S)
    assert found, dom[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"'))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium); .ci/run installs it")
def test_the_page_shows_every_picture_offline_and_requests_nothing(full_run, tmp_path):
    ev, _ = full_run
    page = tmp_path / "report.html"
    shutil.copy(ev / "report.html", page)  # alone in its folder: nothing beside it to load
    seen = probe(page, tmp_path / "profile")
    assert len(seen["images"]) == (ev / "report.md").read_text().count("![") and all(seen["images"]), seen
    assert seen["requests"] == []
    # the probe can tell: a page with a picture from the network shows it unloaded and requested
    (tmp_path / "online.html").write_text('<html><body><img src="https://example.com/x.png"></body></html>')
    online = probe(tmp_path / "online.html", tmp_path / "profile2")
    assert online["images"] == [False] and online["requests"] == ["https://example.com/x.png"]


# -- the comparison chart -----------------------------------------------------------------------------------
def test_holm_adjusts_as_the_step_down_procedure():
    from pipeline.heads.metrics import holm

    assert holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06})
    assert holm({"a": 0.6, "b": 0.5}) == {"a": 1.0, "b": 1.0}


# -- the fine-tuned curve's params ------------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    ({"curves_finetune": {"config": "tpo"}}, "curves_finetune.config: 'tpo' is not a configuration of finetune:; valid: ['top']"),
    ({"curves_finetune": {"shots": [100, 10]}}, "give increasing positive numbers of images per class, each once; got [100, 10]"),
    ({"curves_finetune": {"min_steps": 0}}, "params: curves_finetune.min_steps: Input should be greater than 0"),
])
def test_bad_fine_tuned_curve_settings_name_the_value_and_the_valid_ones(change, message):
    import yaml

    from pipeline.core.config import parse_params
    from pipeline.core.errors import ConfigError
    from tests.conftest import ROOT

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_params({**raw, **change})


def test_shipped_fine_tuned_curve_settings_are_the_defaults_and_points_of_the_curve():
    import yaml

    from pipeline.core.config import CurvesFinetuneParams, parse_params
    from tests.conftest import ROOT

    params = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert params.curves_finetune == CurvesFinetuneParams() and params.curve_finetune_config().key == "finetune.top"
    assert set(params.curves_finetune.shots) <= set(params.curves.shots)  # compared with the frozen heads at the same k


def test_the_trust_answer_says_so_when_most_pairs_are_on_a_plain_background(full_run, tmp_path):
    """On photographs (CIFAR-10) nothing is added; where the leakage stage found most checked pairs on a plain
    background (Fashion-MNIST: all of them), the answer says the near-copy figures are bounds."""
    from pipeline.reports.report import choose, read_inputs, trust_answer

    ev, params = full_run
    copy = tmp_path / "evaluation"
    shutil.copytree(ev, copy)
    summary = json.loads((copy / "leakage" / "summary.json").read_text())
    assert 0 <= summary["checked_on_plain_background"] < 0.5
    head = choose(json.loads((copy / "comparison.json").read_text())).head
    assert "plain background" not in trust_answer(read_inputs(params, copy), head)
    (copy / "leakage" / "summary.json").write_text(json.dumps({**summary, "checked_on_plain_background": 0.9}))
    assert ("; 90% of the pairs checked are on a plain background, where two items of one cut can pass for copies: "
            "read the figures without near-copies as bounds (docs/leakage.md)") in trust_answer(read_inputs(params, copy), head)
