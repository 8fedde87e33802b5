"""dvc.yaml and the code state the same things: the paths of pipeline/core/layout.py, and for each stage the
code it runs (every pipeline module its entry point imports, read from the source) as its deps."""

import json

import pytest
import yaml

from pipeline.core import layout
from pipeline.reports.report import CURVE_PICTURE, RELIABILITY_PICTURE
from tests.conftest import ROOT
from tests.dvc_deps import CODE, DVC_YAML, POOLED_HEADS, code_deps, derived
from tests.imports import closure, cycles, package_graph

KEY = "${key}"
ITEM = "${item}"


@pytest.fixture(scope="module")
def stages() -> dict:
    raw = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in raw.items()}


def paths(entries: list) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


def test_every_stage_lists_exactly_the_code_it_runs(stages):
    """dvc.yaml's code deps are what ``python -m tests.dvc_deps`` derives from the import graph."""
    assert set(stages) == set(CODE)
    for name in CODE:
        listed = [d for d in paths(stages[name]["deps"]) if d.startswith("pipeline/")]
        assert listed == code_deps(name), f"{name}: run python -m tests.dvc_deps"
    text = DVC_YAML.read_text()
    assert derived(text) == text, "dvc.yaml's code deps are stale: run python -m tests.dvc_deps"
    # a package directory listed whole is hashed without the bytecode Python writes into it when a stage runs
    assert "__pycache__/" in (ROOT / ".dvcignore").read_text().splitlines()


LAYERS = [{"pipeline.core"}, {"pipeline.data", "pipeline.store"}, {"pipeline.backbone"}, {"pipeline.heads"},
          {"pipeline.finetune"}, {"pipeline.analyses"}, {"pipeline.reports"}, {"pipeline.stages"}]
"""The packages of the design, each importing only those of the layers before it."""
ENTRY_POINTS = {"pipeline.__main__", "pipeline.model"}
"""Top-level modules above every package: the CLI, and predict / export (f and g together)."""
IMAGE_SIDE = {"pipeline.data", "pipeline.backbone"}


def test_packages_depend_one_way():
    """core <- data, store <- backbone <- heads <- finetune <- analyses <- reports <- stages, with no
    package-level cycle: core (the configuration and head registry, errors, paths, files, device) imports no
    other package; above every package, only the entry points (the CLI, predict and export) at the top level."""
    edges = package_graph()
    assert cycles(edges) == []
    rank = {p: i for i, layer in enumerate(LAYERS) for p in layer}
    assert {p for p in edges if p not in rank} <= ENTRY_POINTS | {"pipeline"}, "a package not placed in LAYERS"
    for p, imported in edges.items():
        if p in ENTRY_POINTS:
            continue
        for q in imported - {"pipeline"}:  # (pipeline/__init__.py: the version)
            assert q not in ENTRY_POINTS and rank[q] < rank[p], f"{p} imports {q}"


def test_the_head_side_does_not_run_the_backbone_or_the_image_code():
    """The f/g rule on the import graph: the pooled heads' stages, compare and the report page never reach the
    frozen backbone, the images, the sources or the leakage stage (compare reads only ids from its pairs.csv);
    a fine-tuned head reaches the backbone module, for its top only. The report stage's mistakes are the data
    side (they read the test images they picture)."""
    data_side = {"pipeline.backbone.backbones", "pipeline.data.images", "pipeline.data.sources", "pipeline.backbone.extract",
                 "pipeline.data.preprocessing", "pipeline.stages.leakage"}
    for stage in ("train", "curves", "probe-backbone", "curves-backbone", "compare-backbones"):
        assert not closure(*CODE[stage]) & data_side, stage
    for command in ("pipeline.stages.compare", "pipeline.reports.report"):
        assert not closure(command) & data_side, command
    assert closure("pipeline.stages.mistakes") & data_side
    assert not closure("pipeline.stages.seeds", *POOLED_HEADS) & data_side  # the backbone's top: only for finetune
    assert closure("pipeline.finetune.head") & data_side == {"pipeline.backbone.backbones", "pipeline.data.preprocessing"}
    edges = package_graph()
    assert not edges["pipeline.heads"] & IMAGE_SIDE  # the pooled heads, by what they import at all


def test_no_import_cycle_in_the_package():
    assert cycles() == []


def test_dvc_yaml_uses_the_paths_of_the_layout(stages):
    def outs(stage):
        return paths(stages[stage].get("outs")) + paths(stages[stage].get("metrics"))

    assert outs("prepare") == [layout.SPLITS.as_posix()]
    assert outs("weights") == [layout.WEIGHTS.as_posix()]
    for stage in ("weights", "weights-backbone"):  # DVC sees a checkpoint replaced in place
        assert layout.CHECKPOINTS.as_posix() in paths(stages[stage]["deps"]) and "always_changed" not in stages[stage]
    assert outs("extract") == [layout.FEATURES["pooled"].as_posix(), layout.FEATURES["cut"].as_posix()]
    for stage, key in [("train", "head"), ("train-heads", f"heads.{KEY}"), ("finetune", f"finetune.{KEY}")]:
        # one command: fit the head, then evaluate the saved head
        live, folder = layout.live_dir(key), layout.evaluation_dir(key).as_posix()
        assert paths(stages[stage]["outs"]) == [
            layout.head_file(key).as_posix(), (live / layout.LIVE_METRICS).as_posix(), f"{folder}/{layout.METRICS}",
            f"{folder}/{layout.DETAILS}", layout.summary_file(key).as_posix()], stage
        assert "metrics" not in stages[stage], stage  # compare writes the one DVC metric, every head's top-1
        assert paths(stages[stage]["plots"]) == [(live / layout.LIVE_PLOTS).as_posix(), f"{folder}/test_predictions.csv",
                                                 f"{folder}/per_class.csv"], stage
        assert all(next(iter(p.values()))["title"] for p in stages[stage]["plots"]), stage
        assert stages[stage]["cmd"].split()[2:] == ["pipeline.stages.train", "--config", key], stage
        features = layout.FEATURES["cut" if stage == "finetune" else "pooled"].as_posix()
        assert {features, layout.SPLITS.as_posix()} <= set(paths(stages[stage]["deps"])), stage
    report = stages["report"]
    assert report["cmd"] == "python -m pipeline.stages.report"  # compare, mistakes, the page: one process
    seeds = layout.SEEDS.as_posix()
    assert outs("report") == [f"{layout.COMPARISON}.md", f"{layout.COMPARISON}.png", f"{layout.COMPARISON}.json",
                              f"{seeds}.md", f"{seeds}.json", *(p.as_posix() for p in layout.mistakes_files().values()),
                              f"{layout.REPORT}.md", f"{layout.REPORT}.html",
                              *(f"{layout.REPORT.parent}/{name}" for name in (CURVE_PICTURE, RELIABILITY_PICTURE)),
                              layout.TOP1.as_posix()]
    metrics = [name for name, stage in stages.items() if "metrics" in stage]
    assert metrics == ["report"] and paths(report["metrics"]) == [layout.TOP1.as_posix()]
    assert outs("curves-finetune") == [layout.CURVES_FINETUNE.as_posix()]
    report_deps = set(paths(report["deps"]))
    assert {(layout.evaluation_dir("head") / layout.METRICS).as_posix(), layout.SUMMARY.as_posix(),
            (layout.evaluation_dir("head") / layout.TEST_PREDICTIONS).as_posix(), layout.SPLITS.as_posix(),
            "${data.source}", layout.LEAKAGE_PAIRS.as_posix()} <= report_deps
    # a folder dep is one some stage always writes into: the summary folder (the main head's), not heads/ or finetune/
    assert not {layout.evaluation_dir("heads.x").parent.as_posix(), layout.evaluation_dir("finetune.x").parent.as_posix()} & report_deps
    assert not {p for p in report_deps if p.startswith(("data/", "models/"))} - {layout.SPLITS.as_posix()}  # no cache
    assert {"mistakes", "heads", "finetune", "seeds.values"} <= set(report["params"])
    leakage = [layout.LEAKAGE_PAIRS.as_posix(), layout.LEAKAGE_PICTURE.as_posix()]
    assert paths(stages["leakage"]["outs"]) == leakage + [layout.LEAKAGE_SUMMARY.as_posix()]
    assert {layout.FEATURES["pooled"].as_posix(), layout.SPLITS.as_posix(), "${data.source}"} <= set(
        paths(stages["leakage"]["deps"]))
    assert stages["seeds"]["cmd"].endswith(f"--seed {ITEM}")  # one stage per seed of seeds.values
    assert paths(stages["seeds"]["outs"]) == [layout.seed_fits_file(ITEM).as_posix()]
    assert layout.seed_fits_file(ITEM).parent.parent == layout.SUMMARY  # inside the folder the report stage reads
    assert {p for p in paths(stages["seeds"]["deps"]) if p.startswith(("data/", "models/"))} == {
        *(f.as_posix() for f in layout.FEATURES.values()), layout.SPLITS.as_posix()}  # the caches only: no images
    curves = layout.CURVES.as_posix()
    assert paths(stages["curves"]["outs"]) == [f"{curves}.md", f"{curves}.png", f"{curves}.csv",
                                               layout.CURVE_DRAWS.as_posix(), f"{curves}.json"]
    assert {layout.FEATURES["pooled"].as_posix(), layout.SPLITS.as_posix()} <= set(paths(stages["curves"]["deps"]))
    assert not {p for p in paths(stages["curves"]["deps"]) if p.startswith(("data/", "models/"))} - {
        layout.FEATURES["pooled"].as_posix(), layout.SPLITS.as_posix()}  # the cache only: no images, no cut cache
    # the backbone comparison: one weights record, cache, extraction summary and probe per compared backbone
    compared, folder = layout.compared_features(ITEM).as_posix(), layout.compared_dir(ITEM)
    assert outs("weights-backbone") == [layout.compared_weights(ITEM).as_posix()]
    assert outs("extract-backbone") == [compared, (folder / layout.COMPARED_EXTRACTION).as_posix()]
    assert outs("plan-backbones") == [layout.BACKBONES_PLAN.as_posix()]  # the folder exists with nothing compared
    assert layout.compared_weights(ITEM).as_posix() in paths(stages["extract-backbone"]["deps"])
    assert outs("probe-backbone") == [(folder / layout.COMPARED_PROBE).as_posix()]
    assert {p for p in paths(stages["probe-backbone"]["deps"]) if p.startswith(("data/", "models/"))} == {
        compared, layout.SPLITS.as_posix()}  # its own cache only
    assert paths(stages["compare-backbones"]["deps"])[0] == layout.BACKBONES.as_posix()
    stem = layout.BACKBONES.as_posix()
    assert outs("compare-backbones") == [f"{stem}.md", f"{stem}.png", f"{stem}.json"]
    curve = (folder / layout.CURVES.name).as_posix()
    assert outs("curves-backbone") == [f"{curve}.md", f"{curve}.png", f"{curve}.csv",
                                       (folder / layout.CURVE_DRAWS.name).as_posix(), f"{curve}.json"]
    assert {p for p in paths(stages["curves-backbone"]["deps"]) if p.startswith(("data/", "models/"))} == {
        compared, layout.SPLITS.as_posix()}
    for stage in ("weights-backbone", "extract-backbone", "probe-backbone", "curves-backbone"):
        assert stages[stage]["cmd"].endswith(f"--backbone {ITEM}"), stage


def test_curve_and_leakage_stage_params_and_plot_follow_the_config():
    """Changing curves.* re-runs only the curve stage (no other stage lists it), the curve stage lists no
    head's params, and the DVC plot of the curve draws a line per head on a log k axis with its interval. leakage.* re-runs
    the leakage stage (and compare through its output), leakage.block_rows nothing."""
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    for name, stage in dvc["stages"].items():
        listed = [p for p in (stage.get("do", stage).get("params") or []) if isinstance(p, str)]
        assert ("curves" in listed) == (name in ("curves", "curves-backbone")), name
    assert dvc["stages"]["curves"]["params"] == ["seed", "curves", "backbone.name", "backbone.weights",
                                                 "backbone.input_size", "backbone.storage_dtype"]
    from pipeline.core.config import LeakageParams

    assert [p for p in dvc["stages"]["leakage"]["params"] if p.startswith("leakage")] == [
        f"leakage.{field}" for field in LeakageParams.model_fields if field != "block_rows"]  # block_rows: memory only
    assert not [name for name, stage in dvc["stages"].items() if name != "leakage"
                and any(str(p).startswith("leakage") for p in stage.get("do", stage).get("params") or [])]
    (plot,) = [p[f"{layout.CURVES.as_posix()}.csv"] for p in dvc["plots"] if f"{layout.CURVES.as_posix()}.csv" in p]
    assert plot["template"] == "learning_curve" and (plot["x"], plot["y"]) == ("k", "top1") and plot["title"]
    template = json.loads((ROOT / ".dvc" / "plots" / "learning_curve.json").read_text())
    assert template["encoding"]["x"]["scale"] == {"type": "log"}  # k from 1 to thousands
    assert template["encoding"]["color"]["field"] == "head"  # one colour per head, one column of curves.csv
    assert [layer["mark"]["type"] for layer in template["layer"]] == ["errorband", "line"]
