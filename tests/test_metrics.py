"""The figures a user reads: intervals, the paired test, and that nothing is measured on training images."""

import json
import math

import numpy as np
import pytest
import yaml
from scipy.optimize import brentq

from pipeline.heads.base import load_head
from pipeline.heads.metrics import Z95, mcnemar_exact, mean_of_proportions_interval, t_quantile, wilson_interval
from pipeline.stages import compare, evaluate, train
from tests.conftest import ROOT


@pytest.mark.parametrize("correct, n", [(0, 10), (1, 10), (7, 10), (10, 10), (8012, 10000), (55, 60)])
def test_wilson_interval_solves_its_defining_equation(correct, n):
    """The Wilson bounds are the p where |p_hat - p| = z sqrt(p (1 - p) / n): found here by root finding."""
    p_hat = correct / n
    gap = lambda p: (p_hat - p) ** 2 - Z95**2 * p * (1 - p) / n  # noqa: E731
    # at p_hat = 0 or 1 the equation also holds at p_hat itself: search just inside
    low = 0.0 if correct == 0 else brentq(gap, 0.0, min(p_hat, 1 - 1e-12))
    high = 1.0 if correct == n else brentq(gap, max(p_hat, 1e-12), 1.0)
    assert wilson_interval(correct, n) == pytest.approx((low, high), abs=1e-9)


@pytest.mark.parametrize("df", [*range(1, 41), 99, 100, 1000])
def test_t_quantile_is_scipys(df):
    from scipy.special import stdtrit

    for p in (0.001, 0.025, 0.3, 0.5, 0.6, 0.9, 0.95, 0.975, 0.995, 0.9995):
        assert t_quantile(df, p) == pytest.approx(float(stdtrit(df, p)), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("df, p", [(0, 0.975), (2.5, 0.975), (3, 0.0), (3, 1.0)])
def test_t_quantile_refuses_what_it_does_not_compute(df, p):
    with pytest.raises(ValueError, match="t_quantile needs a positive integer df and 0 < p < 1"):
        t_quantile(df, p)


def test_mcnemar_is_the_exact_binomial_test_on_the_discordant_pairs():
    rng = np.random.default_rng(0)
    a = rng.random(300) < 0.8
    b = np.where(rng.random(300) < 0.15, ~a, a)  # disagrees on about 15% of the images
    result = mcnemar_exact(a, b)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    assert (result["only_first_right"], result["only_second_right"]) == (only_a, only_b)
    n, k = only_a + only_b, min(only_a, only_b)
    direct = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
    assert result["p_value"] == pytest.approx(direct, rel=1e-9)
    assert mcnemar_exact(a, a)["p_value"] == 1.0  # no discordant pair: no evidence of a difference
    assert mcnemar_exact(np.ones(40, bool), np.zeros(40, bool))["p_value"] == pytest.approx(2 / 2**40)


@pytest.mark.parametrize("correct, n", [(0, 1), (3, 37), (500, 1000), (8012, 10000), (10000, 10000)])
def test_the_closed_forms_are_scipys_binomial_test(correct, n):
    """wilson_interval and mcnemar_exact are written out (importing scipy.stats costs a head swap about 2 s):
    the same figures as scipy's binomtest."""
    from scipy.stats import binomtest

    for confidence in (0.9, 0.95, 0.99):
        ci = binomtest(correct, n).proportion_ci(confidence_level=confidence, method="wilson")
        assert wilson_interval(correct, n, confidence) == pytest.approx((ci.low, ci.high), abs=1e-12)
    a = np.arange(n) < correct  # right on the first `correct` images
    b = np.arange(n) >= n - correct // 3  # right on the last third as many
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    expected = 1.0 if only_a + only_b == 0 else binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue
    assert mcnemar_exact(a, b)["p_value"] == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_mean_class_interval_covers_the_truth_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    truth = np.array([0.9, 0.6, 0.75, 0.5])
    n = np.array([50, 80, 30, 120])
    covered = 0
    for _ in range(2000):
        low, high = mean_of_proportions_interval(rng.binomial(n, truth), n)
        covered += low <= truth.mean() <= high
    assert 0.93 <= covered / 2000 <= 0.97


def test_no_figure_is_measured_on_images_the_head_was_fitted_on(caches, tmp_path):
    """A swept head is refit on train + val: its val figure is the sweep's held-out one, and says so."""
    out, params = caches
    swept = params.model_copy(update={"heads": {"sweep": params.heads["logistic"].model_copy(
        update={"logistic": {"select": "sweep", "grid": {"low": 1e-3, "high": 10.0, "num": 5}}})}})
    train.run(swept, out / "pooled.h5", out / "splits.json", tmp_path / "sweep.npz", key="heads.sweep")
    head, _ = load_head(tmp_path / "sweep.npz")
    metrics = evaluate.run(out / "pooled.h5", tmp_path / "sweep.npz", tmp_path / "sweep")
    assert metrics["val"] == {"top1": head.fitted.chosen_val_top1, "on": "sweep: val before the refit on train + val"}
    assert metrics["test"]["on"] == "test" and metrics["test"]["n"] == 12
    train.run(params, out / "pooled.h5", out / "splits.json", tmp_path / "fixed.npz", key="heads.logistic")
    fixed = evaluate.run(out / "pooled.h5", tmp_path / "fixed.npz", tmp_path / "fixed")
    assert fixed["val"]["on"] == "val" and fixed["val"]["n"] == 6  # measured on the held-out val images
    for figures in (fixed["val"], fixed["test"]):
        assert figures["top1_low"] <= figures["top1"] <= figures["top1_high"]
        assert figures["mean_class_low"] <= figures["mean_class_accuracy"] <= figures["mean_class_high"]
    # metrics.json keeps the few figures a user compares; the rest is in details.json
    saved = json.loads((tmp_path / "fixed" / "metrics.json").read_text())
    assert set(saved["test"]) == {"n", "top1", "top1_low", "top1_high", "top5", "mean_class_accuracy", "mean_class_low",
                                  "mean_class_high", "ece", "ece_calibrated", "on"} - {"top5"}  # 3 classes: no top-5
    assert saved["temperature_on_val"] > 0 and "temperature_on_val" not in metrics  # calibrated ECE: not for the swept head
    details = json.loads((tmp_path / "fixed" / "details.json").read_text())
    assert set(details["test"]) == {"per_class_accuracy", "confusion_matrix"}
    sweep = json.loads((tmp_path / "sweep" / "details.json").read_text())["sweep"]
    assert len(sweep) == 5 and max(s["val_top1"] for s in sweep) == head.fitted.chosen_val_top1
    # every file evaluate writes is an output or a plot of the train stages in dvc.yaml (what DVC does not know
    # of, it neither restores with an experiment nor re-runs a stage for when it is missing)
    train_stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]
    declared = {next(iter(o)) if isinstance(o, dict) else o for o in train_stage["outs"] + train_stage["plots"]}
    for folder in ("fixed", "sweep"):
        written = {p.name for p in (tmp_path / folder).iterdir()}
        assert {f"evaluation/{name}" for name in written} <= declared, folder

    rows = compare.run([tmp_path / "fixed" / "metrics.json", tmp_path / "sweep" / "metrics.json"], tmp_path / "comparison")
    assert "versus_best" not in rows[0] and 0 <= rows[1]["versus_best"]["p_value"] <= 1
    table = (tmp_path / "comparison.md").read_text()
    assert "| best |" in table and "Wilson" in table and "McNemar" in table
