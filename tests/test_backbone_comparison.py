"""The backbone comparison: compared backbones extracted into their own caches, probed, and compared, on real
images through real networks (EfficientNet-Lite0 with its ImageNet weights, and randomly initialised)."""

from __future__ import annotations

import json
import math

import pytest

from pipeline.core.config import parse_params
from pipeline.core.errors import ConfigError, FeatureStoreError

SMALL_HEADS = {  # the comparison's default heads, with a shorter sweep
    "linear-probe": {"kind": "logistic", "logistic": {"select": "sweep", "grid": {"low": 1e-4, "high": 1e2, "num": 5}}},
    "knn": {"kind": "knn", "knn": {"k": 3}},
    "centroid": {"kind": "nearest_centroid"},
}


def raw_params(source, compare: list[str]) -> dict:
    return {
        "data": {"source": str(source), "val_fraction": 0.25},
        "curves": {"shots": [1, 2, "all"], "draws": 2},
        "backbones": {
            "compare": compare,
            "heads": SMALL_HEADS,
            "configurations": {
                "lite0": {"name": "efficientnet_lite0", "input_size": 64, "batch_size": 16},
                "floor": {"name": "efficientnet_lite0", "weights": None, "input_size": 64, "batch_size": 16},
            },
        },
    }


def test_compared_backbones_are_extracted_probed_and_ranked(cifar_folder, tmp_path):
    from pipeline.stages import compare_backbones, curves, extract, prepare, probe

    params = parse_params(raw_params(cifar_folder, ["lite0", "floor"]))
    prepare.run(params, tmp_path / "splits.json")
    folder = tmp_path / "evaluation" / "backbones"
    for name in params.backbones.compare:
        summary = extract.run_compared(params, name, tmp_path / "splits.json", tmp_path / f"{name}.h5",
                                       folder / name / "extract.json", progress=False)
        assert summary["images"] == 36 and summary["input_size"] == 64 and summary["cache_mib"] > 0
        assert 3e6 < summary["parameters"] < 4e6  # EfficientNet-Lite0 without its classifier: 3.37 M
        assert summary["images_per_second"] > 0 and "cores" in summary["machine"]
        assert json.loads((folder / name / "extract.json").read_text()) == summary
        probe.run(params, name, tmp_path / f"{name}.h5", tmp_path / "splits.json", folder / name / "probe.json")
        curves.run(params.with_backbone(name), tmp_path / f"{name}.h5", tmp_path / "splits.json", folder / name / "curves",
                   folder / name / "curve_draws.csv")

    probes = {n: json.loads((folder / n / "probe.json").read_text()) for n in ("lite0", "floor")}
    for result in probes.values():
        assert result["feature_dim"] == 1280 and math.isfinite(result["logme"])
        assert set(result["heads"]) == set(SMALL_HEADS)
        assert "val_top1" not in result["heads"]["linear-probe"]  # swept on val, then refit on train + val
        assert all(0 <= h["test_top1"] <= 1 for h in result["heads"].values())
        assert 0 <= result["heads"]["knn"]["val_top1"] <= 1  # fitted on train only: its val top-1 is an estimate
    # ImageNet features of 3 CIFAR classes carry more evidence than those of a random network
    assert probes["lite0"]["logme"] > probes["floor"]["logme"]

    taus = compare_backbones.run(["lite0", "floor"], "linear-probe", folder, tmp_path / "evaluation" / "backbones")
    assert set(taus) == {"logme", "knn val top-1", "centroid val top-1"}
    assert all(-1 <= t["kendall_tau"] <= 1 for t in taus.values())
    truth = probes["lite0"]["heads"]["linear-probe"]["test_top1"] - probes["floor"]["heads"]["linear-probe"]["test_top1"]
    if truth != 0:  # two backbones: tau is +1 when LogME orders them as the probe does, -1 otherwise
        assert taus["logme"]["kendall_tau"] == (1.0 if truth > 0 else -1.0)
    table = (tmp_path / "evaluation" / "backbones.md").read_text()
    assert "| lite0 | efficientnet_lite0 (DEFAULT) |" in table and "| floor | efficientnet_lite0 (random init) |" in table
    assert "| logme |" in table and "64 px" in table
    assert "## Test top-1 with k labelled images per class (`logistic`" in table  # the first curve head
    assert "| backbone | k = 1 | k = 2 | k = all |" in table
    assert json.loads((tmp_path / "evaluation" / "backbones.json").read_text())["agreement"] == taus
    assert (tmp_path / "evaluation" / "backbones.png").stat().st_size > 0

    # each cache is checked against its own configuration: the floor's settings do not accept lite0's cache
    with pytest.raises(FeatureStoreError, match="weights"):
        probe.run(params, "floor", tmp_path / "lite0.h5", tmp_path / "splits.json", tmp_path / "x.json")
    # a backbone whose stages did not run is named
    with pytest.raises(Exception, match="'lite2' has no"):
        compare_backbones.run(["lite0", "lite2"], "linear-probe", folder, tmp_path / "other")


def test_no_backbone_compared_writes_a_table_saying_so(tmp_path):
    from pipeline.stages import compare_backbones

    assert compare_backbones.run([], "linear-probe", tmp_path / "none", tmp_path / "backbones") == {}
    assert "No backbone is compared" in (tmp_path / "backbones.md").read_text()
    assert (tmp_path / "backbones.png").stat().st_size > 0


@pytest.mark.parametrize("change, message", [
    ({"compare": ["lite0", "lite9"]}, "compare: 'lite9' is not a configuration; valid: ['floor', 'lite0']"),
    ({"compare": ["lite0", "lite0"]}, "name each configuration once"),
    ({"reference": "ridge"}, "reference: 'ridge' is not one of heads"),
    ({"configurations": {"a/b": {"name": "resnet18"}}}, "'a/b': a name is letters, digits"),
    ({"configurations": {"cut": {"name": "resnet18", "cut": "layer4"}}}, "caches pooled features only"),
    ({"heads": {"linear-probe": {"kind": "lasso"}}}, "'lasso' is not a known head"),
    ({"heads": {"linear-probe": {"kind": "ridge", "ridge": {"calibrate": True}}}}, "calibrate: must be false"),
])
def test_bad_comparison_settings_name_the_value_and_the_valid_ones(cifar_folder, change, message):
    raw = raw_params(cifar_folder, ["lite0"])
    for key, value in change.items():
        old = raw["backbones"].get(key)
        raw["backbones"][key] = old | value if isinstance(old, dict) and key == "configurations" else value
    with pytest.raises(ConfigError, match="params: backbones") as err:
        parse_params(raw)
    assert message in str(err.value)


def test_a_compared_configuration_is_what_its_stages_see(cifar_folder):
    params = parse_params(raw_params(cifar_folder, ["floor"]))
    floor = params.with_backbone("floor")
    assert floor.backbone.weights is None and floor.backbone.input_size == 64 and floor.backbone.cut is None
    assert floor.seed == params.seed and floor.data == params.data
    assert parse_params({"backbones": {"configurations": {"x": {"name": "efficientnet_lite2"}}}}).with_backbone(
        "x").backbone.input_size is None  # the native size unless set
    with pytest.raises(ConfigError, match="no compared backbone 'lite3'; valid: \\['floor', 'lite0'\\]"):
        params.with_backbone("lite3")
