"""The learning curve: the draws, the few-shot protocol (selection inside the k-shot set only), the k = all
point against the evaluate stage, the fast paths against the heads, the outputs, and the DVC plots page
rendered offline in headless Chromium. Real features: a small real cache of CIFAR-10 images."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.analyses import curves as C
from pipeline.core import layout
from pipeline.core.config import ALL_SHOTS, CurvesParams, parse_params
from pipeline.core.errors import ConfigError
from pipeline.core.head_registry import head_class
from pipeline.heads.base import FeatureNormalizer
from pipeline.heads.linear import c_from_l2
from pipeline.stages import curves as curves_stage
from pipeline.stages import evaluate, train
from pipeline.store.features import FeatureStore
from tests.conftest import CHROMIUM, ROOT, chromium_dom, small_pooled_cache, with_section

CLASSES = ["airplane", "cat", "ship", "truck"]
RAW = {  # 40 training images per class (30 train + 10 val), 15 test images per class
    "data": {"val_fraction": 0.25},
    "backbone": {"name": "resnet18", "weights": None, "input_size": 64, "batch_size": 16, "cut": None},
    "heads": {}, "finetune": {},
    "curves": {"shots": [1, 2, 5, 10, ALL_SHOTS], "draws": 3},
}


def quiet(_line: str) -> None:
    pass


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Real pooled features (ResNet-18, random init, 64 px) of 4 CIFAR-10 classes, and the params."""
    return small_pooled_cache(tmp_path_factory.mktemp("curves"), CLASSES, RAW)


def with_curves(params, **curves):
    return with_section(params, "curves", **curves)


def load(out: Path):
    with FeatureStore(out / "pooled.h5") as store:
        return store.load("train"), store.load("test"), {s: store.ids(s) for s in ("train", "val", "test")}


# -- the draws ------------------------------------------------------------------------------------
def test_draws_are_stratified_seeded_nested_and_inside_the_train_split(cache):
    out, params = cache
    (_, y), _, ids = load(out)
    curves = params.curves
    plan = C.plan_draws(y, 4, curves, seed=0, log=quiet)
    assert [(d.shots, d.draw) for d in plan] == [(k, d) for k in (1, 2, 5, 10) for d in range(3)] + [(ALL_SHOTS, 0)]
    train_ids, others = np.array(ids["train"]), set(ids["val"]) | set(ids["test"])
    for d in plan:
        counts = np.bincount(y[d.rows], minlength=4)
        if d.shots == ALL_SHOTS:
            assert np.array_equal(d.rows, np.arange(len(y)))
        else:
            assert counts.tolist() == [d.shots] * 4  # stratified: k of every class
        assert len(set(d.rows.tolist())) == len(d.rows)  # without replacement
        assert not set(train_ids[d.rows]) & others  # from the train split only: no val or test image
    by = {(d.shots, d.draw): set(d.rows.tolist()) for d in plan}
    for draw in range(3):  # nested: the k-shot set of a draw holds its smaller ones
        assert by[1, draw] < by[2, draw] < by[5, draw] < by[10, draw]
    assert len({frozenset(by[5, d]) for d in range(3)}) == 3  # the draws differ
    again = C.plan_draws(y, 4, curves, seed=0, log=quiet)
    other = C.plan_draws(y, 4, curves, seed=1, log=quiet)
    assert all(np.array_equal(a.rows, b.rows) for a, b in zip(plan, again))  # seeded
    assert any(not np.array_equal(a.rows, b.rows) for a, b in zip(plan, other) if a.shots != ALL_SHOTS)


def test_a_k_as_large_as_every_class_is_left_out(cache):
    out, params = cache
    (_, y), _, _ = load(out)
    said = []
    plan = C.plan_draws(y, 4, with_curves(params, shots=[2, 30, 64, ALL_SHOTS]).curves, seed=0, log=said.append)
    assert {d.shots for d in plan} == {2, ALL_SHOTS}
    assert said == [f"k = {k}: every class has at most 30 training images, so this is the whole split: left out"
                    for k in (30, 64)]


# -- the few-shot protocol --------------------------------------------------------------------------
def test_the_penalty_is_chosen_on_the_k_shot_rows_only(cache, monkeypatch):
    """A spy on the head's selection: it is called once per draw for every k with at least
    min_shots_for_cv images per class, with exactly that draw's k-shot rows; never below, never at k = all."""
    from pipeline.heads.linear import LogisticHead

    out, params = cache
    (X, y), test, _ = load(out)
    seen = []
    original = LogisticHead.held_out_top1.__func__

    def spy(cls, X_, y_, *args, **kwargs):
        seen.append((np.array(X_), np.array(y_)))
        return original(cls, X_, y_, *args, **kwargs)

    monkeypatch.setattr(LogisticHead, "held_out_top1", classmethod(spy))
    params = with_curves(params, heads={"logistic": {"kind": "logistic"}})
    fits = C.learning_curve((X, y), test, 4, params.curves, seed=0, log=quiet)
    plan = C.plan_draws(y, 4, params.curves, seed=0, log=quiet)
    expected = [d.rows for d in plan if d.shots != ALL_SHOTS and d.shots >= params.curves.min_shots_for_cv]
    assert len(seen) == len(expected) == 6
    assert all(np.array_equal(Xs, X[rows]) and np.array_equal(ys, y[rows]) for (Xs, ys), rows in zip(seen, expected))
    assert [f.selection for f in fits] == ["fixed"] * 6 + ["cv"] * 6 + ["configured"]
    assert all(f.l2 == params.curves.fixed_l2 for f in fits if f.selection == "fixed")
    assert all(f.l2 in params.curves.grid.values() and f.cv_top1 is not None for f in fits if f.selection == "cv")


def test_no_fit_reads_a_training_row_outside_its_k_shot_set(cache):
    """Training rows outside every k-shot set replaced by NaN: every point of every head is unchanged."""
    out, params = cache
    (X, y), test, _ = load(out)
    kinds = ("logistic", "linear", "ridge", "knn", "nearest_centroid")
    params = with_curves(params, shots=[2, 5], heads={n: {"kind": n} for n in kinds})
    plan = C.plan_draws(y, 4, params.curves, seed=0, log=quiet)
    used = np.unique(np.concatenate([d.rows for d in plan]))
    poisoned = np.full_like(X, np.nan)
    poisoned[used] = X[used]
    assert len(used) < len(y)
    clean = C.learning_curve((X, y), test, 4, params.curves, seed=0, log=quiet)
    dirty = C.learning_curve((poisoned, y), test, 4, params.curves, seed=0, log=quiet)
    def points(fits):
        return [(f.head, f.shots, f.draw, f.top1, f.l2) for f in fits]

    assert points(clean) == points(dirty)


def test_the_stage_reads_the_train_and_test_splits_only(cache, monkeypatch, tmp_path):
    out, params = cache
    read = []
    original = FeatureStore.load
    def spy(self, split, *args, **kwargs):
        read.append(split)
        return original(self, split, *args, **kwargs)

    monkeypatch.setattr(FeatureStore, "load", spy)
    curves_stage.run(with_curves(params, shots=[1, ALL_SHOTS]), out / "pooled.h5", out / "splits.json",
                     tmp_path / "curves", tmp_path / "draws.csv")
    assert sorted(read) == ["test", "train"]  # never the validation split


def test_cross_validation_fits_every_fold_as_its_own_logistic_regression(cache):
    """The batched folds (one product for every fold, each in its own normalisation) give the held-out
    accuracy that fitting scikit-learn on each fold gives, at every penalty of the grid."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    out, params = cache
    (X, y), _, _ = load(out)
    curves = with_curves(params, cv_max_iter=1000, grid={"low": 1e-2, "high": 10.0, "num": 4}).curves
    plan = C.plan_draws(y, 4, curves, seed=0, log=quiet)
    rows = next(d.rows for d in plan if d.shots == 10 and d.draw == 1)
    Xk, yk = X[rows], y[rows]
    grid = curves.grid.values()[::-1]
    held_out = head_class("logistic").held_out_top1(Xk, yk, 4, params.head_config("head").params, grid, curves, 7)
    brute = []
    for l2 in grid:
        correct = 0
        for fit_rows, held in StratifiedKFold(curves.cv_folds, shuffle=True, random_state=7).split(Xk, yk):
            norm = FeatureNormalizer("standardize").fit(Xk[fit_rows])
            model = LogisticRegression(C=c_from_l2(l2, len(fit_rows), 4), max_iter=10000, tol=1e-8)
            model.fit(norm.transform(Xk[fit_rows]), yk[fit_rows])
            correct += int((model.predict(norm.transform(Xk[held])) == yk[held]).sum())
        brute.append(correct / len(rows))
    np.testing.assert_allclose(held_out, brute, atol=1.01 / len(rows))  # at most one image apart


@pytest.mark.parametrize("normalize", ["standardize", "l2", "none"])
def test_ridge_leave_one_out_is_the_ridge_head_fitted_without_each_image(cache, normalize):
    """The leave-one-out top-1 from one SVD equals fitting the ridge head on every set of n - 1 images (on
    the features normalised over the whole set, as the selection does) and predicting the image left out."""
    out, params = cache
    (X, y), _, _ = load(out)
    curves = params.curves
    plan = C.plan_draws(y, 4, curves, seed=0, log=quiet)
    rows = next(d.rows for d in plan if d.shots == 10 and d.draw == 2)
    Xk, yk = X[rows], y[rows]
    ridge = head_class("ridge")
    settings = ridge.Params(normalize=normalize)
    grid = np.array([1e-3, 0.1, 10.0])
    fast = ridge.held_out_top1(Xk, yk, 4, settings, grid, curves, 0)
    Z = FeatureNormalizer(normalize).fit(Xk).transform(Xk)
    brute = []
    for l2 in grid:
        alpha = ridge.with_l2(settings, l2, len(yk), 4).alpha
        assert alpha == l2 * len(yk) / 2
        right = 0
        for i in range(len(yk)):
            others = np.arange(len(yk)) != i
            head = ridge(ridge.Params(normalize="none", alpha=alpha)).fit(Z[others], yk[others], n_classes=4)
            right += int(head.predict(Z[i : i + 1])[0] == yk[i])
        brute.append(right / len(yk))
    assert fast == brute
    assert len(set(brute)) > 1  # the penalty matters on these features: the check can tell them apart


# -- k = all, and the fast paths ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["logistic", "ridge", "nearest_centroid", "knn"])
def test_the_all_point_is_the_evaluated_top1_of_the_main_head(cache, kind, tmp_path):
    """With the main head's params, the curve's k = all point equals evaluate's test top-1 of that head
    on the same file, exactly (the shipped logistic entry has the main head's shipped params)."""
    out, params = cache
    raw = params.model_dump()
    raw["head"] = {"kind": kind}
    raw["curves"]["heads"] = {"main": {"kind": kind}}
    params = parse_params(raw)
    assert params.curves.head_configs()[0].params == params.head_config("head").params
    train.run(params, out / "pooled.h5", out / "splits.json", tmp_path / "head.npz")
    metrics = evaluate.run(out / "pooled.h5", tmp_path / "head.npz", tmp_path / "eval")
    curves_stage.run(params, out / "pooled.h5", out / "splits.json", tmp_path / "curves", tmp_path / "draws.csv")
    rows = list(csv.DictReader(open(tmp_path / "draws.csv")))
    (at_all,) = [r for r in rows if r["shots"] == ALL_SHOTS]
    assert float(at_all["top1"]) == metrics["test"]["top1"]
    assert json.loads((tmp_path / "curves.json").read_text())["full_top1"]["main"] == round(metrics["test"]["top1"], 4)


def test_the_shipped_logistic_curve_head_has_the_main_heads_params():
    params = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    config = next(c for c in params.curves.head_configs() if c.kind == "logistic")
    assert params.head.kind == "logistic" and config.params == params.head_config("head").params


@pytest.mark.parametrize("heads", [
    {"ridge": {"kind": "ridge"}}, {"ridge": {"kind": "ridge", "ridge": {"normalize": "l2", "alpha": 0.5}}},
    {"ridge": {"kind": "ridge", "ridge": {"normalize": "none"}}},
    {"knn": {"kind": "knn"}}, {"knn": {"kind": "knn", "knn": {"k": 3, "normalize": "none"}}},
    {"nc": {"kind": "nearest_centroid"}}, {"logistic": {"kind": "logistic"}}, {"linear": {"kind": "linear"}},
])
def test_every_point_is_what_the_head_itself_scores(cache, heads):
    """The fast paths (ridge from nested moments, k-NN from shared similarities, linear scores through
    the folded normalisation) against the head fitted on the same rows with the same params."""
    out, params = cache
    (X, y), (Xt, yt), _ = load(out)
    params = with_curves(params, heads=heads)
    fits = C.learning_curve((X, y), (Xt, yt), 4, params.curves, seed=0, log=quiet)
    plan = C.plan_draws(y, 4, params.curves, seed=0, log=quiet)
    (config,) = params.curves.head_configs()
    assert len(fits) == len(plan)
    for fit, draw in zip(fits, plan):
        kind = head_class(config.kind)
        head_params = config.params if fit.selection == "configured" else kind.with_l2(config.params, fit.l2, len(draw.rows), 4)
        head = kind(head_params, seed=0).fit(X[draw.rows], y[draw.rows], n_classes=4)
        assert fit.top1 == float((head.predict(Xt) == yt).mean()), (fit, draw.shots)
        if config.kind == "knn":
            assert fit.neighbours == min(config.params.k, len(draw.rows))


# -- the numbers, and the outputs ----------------------------------------------------------------------
def test_t_interval_and_the_headline_numbers():
    mean, std, low, high = C.t_interval([0.5, 0.6, 0.7], 0.95)
    assert (mean, std) == pytest.approx((0.6, 0.1)) and high - mean == pytest.approx(4.302653 * 0.1 / 3**0.5)
    assert C.t_interval([0.8], 0.95) == (0.8, None, None, None)
    assert C.t_interval([0.7, 0.7], 0.95) == (pytest.approx(0.7), 0.0, pytest.approx(0.7), pytest.approx(0.7))
    from scipy.stats import t  # the library's interval, for several sizes and levels

    draws = np.random.default_rng(0).uniform(0.5, 0.9, 40)
    for n, confidence in [(2, 0.9), (3, 0.95), (5, 0.99), (40, 0.95)]:
        v = draws[:n]
        expected = t.interval(confidence, n - 1, loc=v.mean(), scale=v.std(ddof=1) / n**0.5)
        assert C.t_interval(list(v), confidence)[2:] == pytest.approx(expected, rel=1e-12)

    def point(head, shots, mean, low=None, high=None):
        return C.Point(head, shots, 100.0 if shots == ALL_SHOTS else float(shots), 1, 0, mean, None, low, high)

    points = [point("a", 1, 0.30, 0.2, 0.4), point("a", 4, 0.60, 0.55, 0.65), point("a", 16, 0.78), point("a", ALL_SHOTS, 0.80),
              point("b", 1, 0.50, 0.45, 0.55), point("b", 4, 0.55, 0.5, 0.6), point("b", 16, 0.60), point("b", ALL_SHOTS, 0.90)]
    shots, estimate = C.labels_needed(points, "a", 0.9)  # 0.72: between 4 (0.60) and 16 (0.78)
    assert shots == 16 and estimate == pytest.approx(np.exp(np.log(4) + (0.72 - 0.6) / 0.18 * np.log(4)))
    assert C.labels_needed(points, "a", 0.5)[0] == 4 and C.labels_needed(points, "b", 0.95)[0] == ALL_SHOTS
    best = C.best_heads(points)
    assert best["1"] == {"head": "b", "top1": 0.5, "margin": 0.2, "apart": True}
    assert best["4"]["head"] == "a" and best["4"]["apart"] is False and best["all"]["head"] == "b"
    assert C.headline(points, [0.9, 0.95]) == {
        "full_top1": {"a": 0.8, "b": 0.9},
        "labels_per_class_for": {"90%": {"a": 16, "b": ALL_SHOTS}, "95%": {"a": 16, "b": ALL_SHOTS}},
        "best_head": {"1": "b", "4": "a", "16": "a", "all": "b"},
    }


def test_the_stage_writes_the_table_the_plots_and_the_headline(cache, tmp_path, capsys):
    out, params = cache
    summary = curves_stage.run(params, out / "pooled.h5", out / "splits.json", tmp_path / "curves", tmp_path / "draws.csv")
    printed = capsys.readouterr().out
    assert re.search(r"logistic k=   10: test top-1 [\d.]+ \+- [\d.]+ \[[\d.]+, [\d.]+\] \(3 draws\) l2 [\d.e+-]+ CV", printed)
    assert "logistic k=    1:" in printed and "l2 1 fixed x3" in printed  # the fixed penalty, said
    assert "labels per class to reach 90% of the k = all top-1" in printed
    assert set(summary) == {"full_top1", "labels_per_class_for", "best_head"}
    assert json.loads((tmp_path / "curves.json").read_text()) == summary
    assert len((tmp_path / "curves.json").read_text()) < 1500  # small enough for a DVC metric
    table = (tmp_path / "curves.md").read_text()
    assert "95% t-interval of the mean over the draws" in table and "5-fold stratified cross-validation" in table
    assert "| logistic | 10 | 3 | 40 |" in table and "CV" in table and "configured (C = 0.001)" in table
    rows = list(csv.DictReader(open(tmp_path / "curves.csv", newline="")))  # long: one row per head and k
    assert list(rows[0]) == ["head", "k", "shots", "top1", "low", "high"]
    assert [r["head"] for r in rows] == [h for h in ("logistic", "ridge", "nearest_centroid", "knn") for _ in range(5)]
    assert [r["shots"] for r in rows[:5]] == ["1", "2", "5", "10", "all"]
    assert rows[4]["k"] == "30.0" and rows[4]["low"] == rows[4]["high"] == ""  # k = all: one draw, no interval
    assert all(float(r["low"]) <= float(r["top1"]) <= float(r["high"]) for r in rows if r["shots"] != "all")
    draws = (tmp_path / "draws.csv").read_text().splitlines()
    assert len(draws) == 1 + 4 * (4 * 3 + 1)
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("raw, message", [
    ({"shots": [4, 2, "all"]}, r"curves.shots: k must increase, each once, with 'all' \(if given\) last"),
    ({"shots": [0, "all"]}, r"curves.shots: every k must be a positive number"),
    ({"heads": {"x": {"kind": "finetune"}}}, r"curves.heads.x.kind: 'finetune' trains on the cut cache"),
    ({"heads": {"x": {"kind": "svm"}}}, r"curves.heads.x.kind: 'svm' is not a known head"),
    ({"heads": {"x": {"kind": "logistic", "logistic": {"select": "sweep"}}}},
     r"curves.heads.x.logistic.select: must be 'fixed' in a learning curve.*never on the validation split"),
    ({"heads": {"x": {"kind": "ridge", "ridge": {"alpah": 1}}}}, r"curves.heads.x.ridge.alpah: Extra inputs"),
    ({"cv_folds": 6}, r"curves: min_shots_for_cv \(5\) must be at least cv_folds \(6\)"),
    ({"targets": [1.5]}, r"curves.targets: fractions must lie in \(0, 1\]"),
    ({"confidence": 1}, r"curves.confidence: Input should be less than 1"),
    ({"draws": 0}, r"curves.draws: Input should be greater than or equal to 1"),
])
def test_bad_curve_params_name_the_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_params({"curves": raw})


def test_the_default_params_are_the_shipped_ones():
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())["curves"]
    assert parse_params({"curves": shipped}).curves == CurvesParams()


# -- the plots page, rendered offline ------------------------------------------------------------------


def render(page: Path, profile: Path, screenshot: Path | None = None) -> str:
    """The DOM of ``page`` after headless Chromium ran its scripts, offline."""
    return chromium_dom(page, profile, screenshot)


def charts(dom: str) -> dict[str, bool]:
    """Plot div id -> whether Vega drew a chart in it (a <canvas class="marks"> or <svg class="marks">)."""
    parts = re.split(r'<div id="([^"]+)"[^>]*>', dom)
    return {parts[i]: bool(re.search(r'<(canvas|svg)[^>]*class="marks"', parts[i + 1])) for i in range(1, len(parts), 2)}


def plots_project(cache, tmp_path: Path) -> tuple[Path, dict]:
    """The project's dvc.yaml, params.yaml, .dvc/config and page template in a git repository, with the
    plot files of a tiny run written by the real stages (main head, an mlp, the curve)."""
    out, params = cache
    repo = tmp_path / "project"
    for name in ("dvc.yaml", "params.yaml", ".dvc/config", ".dvc/plots", "plots", ".dvcignore"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(ROOT / name, repo / name)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw.update(data={**raw["data"], "source": str(out / "images"), "val_fraction": 0.25},
               backbone={**raw["backbone"], **RAW["backbone"]}, finetune={},
               heads={"mlp": {"kind": "mlp", "mlp": {"epochs": 3, "hidden": 16}}})
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = parse_params(raw)
    features, splits = out / "pooled.h5", out / "splits.json"
    for key in ("head", "heads.mlp"):
        train.run(params, features, splits, repo / layout.head_file(key), key, live_dir=repo / layout.live_dir(key))
        evaluate.run(features, repo / layout.head_file(key), repo / layout.evaluation_dir(key), layout.head_name(key))
    curves_stage.run(params, features, splits, repo / layout.CURVES, repo / layout.CURVE_DRAWS)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True, env=env)
    return repo, env


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium); .ci/run installs it")
def test_the_offline_page_is_what_its_builder_writes():
    """plots/offline.html is plots/build_offline_template.py's page around the inlined libraries: the page's own
    markup (head, the script that drops a plot without data, style) is written in the builder alone."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_offline_template", ROOT / "plots" / "build_offline_template.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    page = (ROOT / "plots" / "offline.html").read_text(encoding="utf-8")
    versions = re.search(r"from the npm packages\n(.*?)\nLicences", page, re.S).group(1)
    scripts = re.findall(r"    <script>/\* vega.*?\n    </script>", page, re.S)
    assert len(scripts) == len(builder.PACKAGES)
    assert builder.PAGE.format(versions=versions, scripts="\n".join(scripts)) == page


def test_dvc_plots_show_renders_offline_in_headless_chromium(cache, tmp_path):
    """`dvc plots show` with the project's default page template (.dvc/config: plots/offline.html,
    Vega inlined) draws the confusion matrices, the learning curve and the training curves with no
    network; the same plots with DVC's own page (scripts from a CDN) draw nothing offline."""
    repo, env = plots_project(cache, tmp_path)
    dvc = [sys.executable, "-m", "dvc", "plots", "show"]
    shown = subprocess.run([*dvc, "-o", "offline"], cwd=repo, env=env, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    page = (repo / "offline" / "index.html")
    html = page.read_text()
    assert "cdn.jsdelivr.net" not in html and "<script src=" not in html and "vega-embed" in html
    screenshot = Path(os.environ["PLOTS_SCREENSHOT"]) if os.environ.get("PLOTS_SCREENSHOT") else None
    drawn = charts(render(page, tmp_path / "profile", screenshot))
    expected = {"evaluation_test_predictions_csv", "evaluation_heads_mlp_test_predictions_csv", "evaluation_curves_csv",
                "evaluation_live_heads_mlp_plots_metrics_train_loss_tsv", "evaluation_live_heads_mlp_plots_metrics_val_top1_tsv"}
    assert expected <= set(drawn), sorted(drawn)
    assert "evaluation_live_head_plots_metrics_no_epochs_tsv" in html  # DVC wrote its div; the page dropped it
    assert not [name for name in drawn if name.startswith("evaluation_live_head_")]  # logistic: fitted in one go, no plot
    assert not [name for name in drawn if name.endswith("seconds_tsv")]  # seconds: in metrics.json, not a plot
    assert all(drawn.values()), {k: v for k, v in drawn.items() if not v}

    default_page = tmp_path / "cdn.html"  # DVC's built-in page: its {scripts} are the CDN <script> tags
    from dvc_render.html import PAGE_HTML

    default_page.write_text(PAGE_HTML)
    shown = subprocess.run([*dvc, "-o", "cdn", "--html-template", str(default_page)], cwd=repo, env=env,
                           capture_output=True, text=True)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "cdn.jsdelivr.net" in (repo / "cdn" / "index.html").read_text()
    offline_cdn = charts(render(repo / "cdn" / "index.html", tmp_path / "profile2"))
    empty = {"evaluation_live_head_plots_metrics_no_epochs_tsv"}  # DVC's page keeps the empty plot's div
    assert set(offline_cdn) == set(drawn) | empty and not any(offline_cdn.values())  # the test can tell: blank without it
