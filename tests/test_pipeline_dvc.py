"""End to end: the real DVC pipeline in a temporary git repository, on a small real subset."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import yaml

from pipeline.core import layout
from tests.conftest import ROOT


def sh(cmd: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def dvc(repo: Path, env: dict, *args: str) -> str:
    return sh([sys.executable, "-m", "dvc", *args], repo, env)


def ran(output: str) -> set[str]:
    """The stages a dvc repro / exp run ran."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def readme_exp_show() -> list[str]:
    """The experiment-comparison command the README gives (``dvc exp show ...``), as arguments."""
    import shlex

    (line,) = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("dvc exp show")]
    return shlex.split(line.split("  #")[0])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_project(tmp_path: Path, edit) -> tuple[Path, dict]:
    repo = tmp_path / "project"
    repo.mkdir()
    for name in layout.PROJECT_FILES:
        src, dst = ROOT / name, repo / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["subset_per_class"] = 6
    params["backbone"]["batch_size"] = 32
    edit(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.pop("PYTHONPATH", None)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        sh(cmd, repo, env)
    return repo, env


def commit(repo: Path, env: dict, message: str) -> None:
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], repo, env)


def lock_entry(repo: Path, stage: str) -> dict:
    return yaml.safe_load((repo / "dvc.lock").read_text())["stages"][stage]


def test_dvc_repro_then_each_change_reruns_only_what_it_touches(tmp_path):
    def edit(params):
        params["heads"] = {"ridge": {"kind": "ridge"}, "knn": {"kind": "knn"}}
        params["finetune"]["top"]["finetune"]["epochs"] = 1
        params["backbones"]["heads"]["linear-probe"]["logistic"]["grid"] = {"low": 1e-4, "high": 1e2, "num": 5}
        params["backbones"]["configurations"] |= {
            "small": {"name": "efficientnet_lite0", "input_size": 64, "batch_size": 32},
            "floor": {"name": "efficientnet_lite0", "weights": None, "input_size": 64, "batch_size": 32}}

    repo, env = make_project(tmp_path, edit)
    out = dvc(repo, env, "repro")
    assert ran(out) == {"prepare", "weights", "extract", "train", "train-heads@ridge", "train-heads@knn", "finetune@top",
                        "leakage", "curves", "plan-backbones", "compare-backbones", "curves-finetune", "report"}  # no seeds
    order = [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")]
    # results early: the main head's metrics come right after the one extraction pass, before the other heads
    assert order[order.index("extract") + 1] == "train"
    features, cut_cache = repo / "data" / "features" / "pooled.h5", repo / "data" / "features" / "cut.h5"
    digests = {features: sha256(features), cut_cache: sha256(cut_cache)}
    extract_lock = lock_entry(repo, "extract")
    metrics = json.loads((repo / "evaluation" / "metrics.json").read_text())
    assert metrics["head"] == "logistic"
    assert metrics["test"]["n"] == 60 and metrics["val"]["n"] == 10
    assert metrics["test"]["top1"] > 0.4  # real ImageNet features on 10 classes (chance: 0.1)
    assert (repo / "evaluation" / "report_reliability.png").stat().st_size > 0
    shown = json.loads(dvc(repo, env, "metrics", "show", "--json"))
    files = next(iter(shown.values()))["data"]  # keyed by revision ("" for the workspace)
    # one file: the test top-1 of every trained head; everything else is in files the report reads
    assert set(files) == {"evaluation/top1.json"}
    assert files["evaluation/top1.json"]["data"] == {
        name: round(json.loads((repo / "evaluation" / "summary" / f"{name}.json").read_text())["test_top1"], 4)
        for name in ("head", "knn", "ridge", "top")}
    assert files["evaluation/top1.json"]["data"]["head"] == round(metrics["test"]["top1"], 4)
    table = dvc(repo, {**env, "COLUMNS": "400"}, "metrics", "show")
    assert max(map(len, table.splitlines())) <= 120, table  # read at a glance in a 120-column terminal
    leakage = json.loads((repo / "evaluation" / "leakage" / "summary.json").read_text())
    assert leakage["pairs"]["test-train"]["searched"] == 60 and leakage["pairs"]["val-train"]["searched"] == 10
    assert (repo / "evaluation" / "leakage" / "pairs.png").stat().st_size > 0
    curve = json.loads((repo / "evaluation" / "curves.json").read_text())
    assert set(curve["best_head"]) == {"1", "2", "4", "all"}  # 5 training images per class: k = 8 ... 1024 left out
    assert curve["full_top1"]["logistic"] == round(metrics["test"]["top1"], 4)  # the main head's own metric
    assert json.loads((repo / "evaluation" / "live" / "finetune" / "top" / "metrics.json").read_text())["step"] == 0
    table = (repo / "evaluation" / "comparison.md").read_text()
    assert all(f"| {name} |" in table for name in ("head", "ridge", "knn", "top"))
    assert f"test top-1 without near-copies ({leakage['test_removed']} removed)" in table
    assert (repo / "evaluation" / "comparison.png").stat().st_size > 0
    report = json.loads((repo / "evaluation" / "mistakes" / "mistakes.json").read_text())
    assert report["main"]["config"] == "head" and report["main"]["worst"]  # test images of the archive, drawn
    assert (repo / "evaluation" / "mistakes" / "main_worst.png").stat().st_size > 0
    assert json.loads((repo / "evaluation" / "seeds.json").read_text())["seeds"] == []  # off by default
    page = (repo / "evaluation" / "report.md").read_text()
    assert page.count("\n## ") == 5 and "data:image/png;base64," in (repo / "evaluation" / "report.html").read_text()
    skipped = json.loads((repo / "evaluation" / "curves_finetune.json").read_text())  # 5 images per class: no k below
    assert skipped["config"] == "finetune.top" and skipped["points"] == []
    commit(repo, env, "first run")
    # git holds every file of the evaluation folders (no empty folder an output needs): checked out afresh, as
    # in a clone, nothing is stale
    shutil.rmtree(repo / "evaluation")
    sh(["git", "checkout", "--", "evaluation"], repo, env)
    assert "Data and pipelines are up to date" in dvc(repo, env, "status")

    def after(*settings: str) -> set[str]:
        return ran(dvc(repo, env, "exp", "run", *(a for s in settings for a in ("-S", s))))

    # another main head: only its train stage (fit, evaluate) and the report stage (compare, mistakes, report);
    # no seed stage while seeds.values is empty
    assert after("head.kind=ridge") == {"train", "report"}
    assert json.loads((repo / "evaluation" / "metrics.json").read_text())["head"] == "ridge"
    # two experiments, then the README's comparison command: one row per experiment, within 200 columns, with
    # the params each changed and the test top-1 of every head
    assert after("finetune.top.finetune.epochs=2") == {"finetune@top", "curves-finetune", "report"}
    shown = dvc(repo, {**env, "COLUMNS": "400"}, *readme_exp_show()[1:], "--no-pager")
    lines = shown.splitlines()
    assert max(map(len, lines)) <= 200, shown
    header = lines[1].split()
    assert {"head", "ridge", "knn", "top", "head.kind", "finetune.top.finetune.epochs"} <= set(header), header
    assert not [h for h in header if "/" in h or h in ("rev", "typ", "parent")], header
    assert {"logistic", "ridge"} <= set(shown.split()) and {"1", "2"} <= set(shown.split())  # the values
    assert lock_entry(repo, "train")["params"]["params.yaml"]["head.kind"] == "ridge"
    # a setting of a kind the main head does not use: nothing of the main head
    assert after("head.knn.k=5") == set()
    # a setting of the learning curve: the curve only (and the report, which shows it)
    assert after("curves.draws=2") == {"curves", "report"}
    # a setting of the pictures of the mistakes: the report stage only
    assert after("mistakes.grid_size=4") == {"report"}
    # calibrating the main head: its train stage (never extract) and the report stage
    assert after("head.ridge.calibrate=true") == {"train", "report"}
    calibrated = json.loads((repo / "evaluation" / "metrics.json").read_text())
    assert calibrated["chosen"]["temperature"] > 0 and "ece_uncalibrated" in calibrated["test"]
    assert {"curves"} <= after("+curves.heads.knn.knn.k=3") <= {"curves", "report"}  # + adds a key
    # a setting of the leakage search: that stage (and the report stage, when the pairs it finds change);
    # its block size: nothing
    rerun = after("leakage.pixel_size=24")
    assert "leakage" in rerun and rerun <= {"leakage", "report"}
    assert after("leakage.block_rows=7") == set()
    # a compared head's setting: only that head's stage and the report stage
    assert after("+heads.knn.knn.k=5") == {"train-heads@knn", "report"}  # + adds a key
    # a fine-tune setting: only that head; a new cut: the one extraction pass again (writing pooled.h5
    # byte for byte as it was, so no pooled head re-runs) and what is trained on the cut cache
    assert after("finetune.top.finetune.lr_top=0.001") == {"finetune@top", "curves-finetune", "report"}
    # seeds on: one stage per seed, and the report stage
    assert after("seeds.values=[0,1]", "seeds.configurations=[heads.knn]", "seeds.splits=true") == {"seeds@0", "seeds@1",
                                                                                                     "report"}
    spread = json.loads((repo / "evaluation" / "seeds.json").read_text())["configurations"]["heads.knn"]
    assert spread["n"] == 2 and spread["n_train"] == 50
    assert f"{spread['mean']:.4f} ± {spread['sd']:.4f} (2 seeds, splits)" in (repo / "evaluation" / "comparison.md").read_text()
    assert lock_entry(repo, "extract") == extract_lock  # DVC's own record of extract is unchanged
    assert all(sha256(path) == digest for path, digest in digests.items())
    out = dvc(repo, env, "exp", "run", "-S", "backbone.cut=_blocks.14")
    assert ran(out) == {"extract", "finetune@top", "curves-finetune", "seeds@0", "seeds@1", "report"}
    assert "cut cache at the input of _blocks.14: 120 images x 192x7x7 float16 = 0.00 GiB" in out  # said before extracting
    assert sha256(features) == digests[features]

    # the backbone comparison: switched on, it extracts and probes each listed backbone in its own cache; adding
    # one extracts only that one; a head setting of the comparison re-probes every cache and extracts nothing;
    # removing one recomputes nothing
    extract_lock = lock_entry(repo, "extract")  # after the new cut above
    assert after("backbones.compare=[small]") == {"weights-backbone@small", "extract-backbone@small", "probe-backbone@small", "curves-backbone@small",
                                                  "plan-backbones", "compare-backbones", "report"}
    added = dvc(repo, env, "exp", "run", "-S", "backbones.compare=[small,floor]")
    assert ran(added) == {"weights-backbone@floor", "extract-backbone@floor", "probe-backbone@floor",
                          "curves-backbone@floor", "plan-backbones", "compare-backbones", "report"}
    small_cache = repo / "data" / "features" / "backbones" / "small.h5"
    small_digest = sha256(small_cache)
    table = (repo / "evaluation" / "backbones.md").read_text()
    assert "| small | efficientnet_lite0 (DEFAULT) |" in table and "| floor | efficientnet_lite0 (random init) |" in table
    agreement = json.loads((repo / "evaluation" / "backbones.json").read_text())["agreement"]
    best = max(("small", "floor"), key=lambda b: json.loads((repo / "evaluation" / "backbones" / b / "probe.json").read_text())
               ["heads"]["linear-probe"]["test_top1"])
    assert f"- **Which backbone**: **{best}** (efficientnet_lite0) gives the highest linear-probe test top-1" in \
        (repo / "evaluation" / "report.md").read_text()
    assert set(agreement) == {"logme", "knn val top-1"} and -1 <= agreement["logme"]["kendall_tau"] <= 1
    assert json.loads((repo / "evaluation" / "backbones" / "small" / "probe.json").read_text())["heads"]  # every head
    assert json.loads((repo / "evaluation" / "backbones" / "floor" / "extract.json").read_text())  # and its cost
    probes = {"probe-backbone@small", "probe-backbone@floor"}
    assert probes <= after("+backbones.heads.knn.knn.k=3") <= probes | {"compare-backbones", "report"}  # + adds a key
    curves = {"curves", "curves-backbone@small", "curves-backbone@floor"}  # a curve setting: every curve, no probe
    assert curves <= after("curves.draws=3") <= curves | {"compare-backbones", "report"}
    assert after("backbones.compare=[floor]") == {"plan-backbones", "compare-backbones", "report"}
    # listed again: its cache comes back from DVC's run cache, nothing of it is computed
    assert after("backbones.compare=[floor,small]") <= {"probe-backbone@small", "curves-backbone@small", "plan-backbones",
                                                        "compare-backbones", "report"}
    assert sha256(small_cache) == small_digest and lock_entry(repo, "extract") == extract_lock


@pytest.mark.slow
@pytest.mark.parametrize("switch", ["no fine-tuning", "no compared heads"])
def test_documented_ways_to_turn_parts_off_run(tmp_path, switch):
    """README / docs: `backbone.cut: null` with `finetune: {}` computes no cut cache; `heads: {}` compares
    the main head alone. Both run to the end."""
    def edit(params):
        params["heads"] = {"ridge": {"kind": "ridge"}}
        params["finetune"]["top"]["finetune"]["epochs"] = 1
        if switch == "no fine-tuning":
            params["backbone"]["cut"], params["finetune"] = None, {}
        else:
            params["heads"] = {}
            params["backbone"]["cut"], params["finetune"] = None, {}

    repo, env = make_project(tmp_path, edit)
    out = dvc(repo, env, "repro")
    assert "report" in ran(out)
    with h5py.File(repo / "data" / "features" / "cut.h5") as h5:  # extract writes a placeholder cut cache
        assert list(h5) == [] and "backbone.cut is null" in h5.attrs["placeholder"]
    assert not any(s.startswith("finetune@") for s in ran(out))
    table = (repo / "evaluation" / "comparison.md").read_text()
    assert "| head |" in table and ("| ridge |" in table) == (switch == "no fine-tuning")
    # docs/heads.md: a head swap, then back to the committed head with git and dvc checkout, nothing fitted again
    commit(repo, env, "first run")
    assert ran(dvc(repo, env, "exp", "run", "-S", "head.kind=ridge")) == {"train", "report"}
    sh(["git", "checkout", "--", "params.yaml", "dvc.lock", "evaluation"], repo, env)
    dvc(repo, env, "checkout")
    assert "Data and pipelines are up to date" in dvc(repo, env, "status")
    assert sh(["git", "status", "--porcelain"], repo, env) == ""
    # a clean re-run: every report and model removed, dvc repro makes them again (no folder a stage reads is
    # left for git to provide: evaluation/heads, finetune, backbones do not exist here)
    shutil.rmtree(repo / "evaluation")
    shutil.rmtree(repo / "models")
    again = ran(dvc(repo, env, "repro"))
    assert {"train", "report", "plan-backbones", "compare-backbones"} <= again
    assert "extract" not in again  # the caches were not touched
    assert (repo / "evaluation" / "report.html").exists() and (repo / "evaluation" / "top1.json").exists()


@pytest.mark.slow
def test_a_checkpoint_changed_in_place_reruns_the_extraction(tmp_path):
    """backbone.weights pointing at a file: one outside data/checkpoints is refused (DVC could not see it
    change); one linked there and overwritten makes the features stale, and DVC sees it; a checkpoint added
    beside it re-runs only the weights stage."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    checkpoint = tmp_path / "lite0.pth"
    torch.manual_seed(0)
    torch.save(EfficientNet.from_name("efficientnet-lite0").state_dict(), checkpoint)

    def edit(params):
        params["backbone"].update(weights=str(checkpoint), cut=None)
        params["heads"], params["finetune"] = {}, {}

    repo, env = make_project(tmp_path, edit)
    refused = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True)
    assert refused.returncode != 0 and not (repo / layout.FEATURES["pooled"]).exists()
    assert f"backbone.weights {str(checkpoint)!r} is a checkpoint outside data/checkpoints/" in refused.stderr, refused.stderr
    (repo / layout.CHECKPOINTS / "lite0.pth").symlink_to(checkpoint)
    dvc(repo, env, "exp", "run", "-S", "backbone.weights=data/checkpoints/lite0.pth")
    commit(repo, env, "first run")
    assert "Data and pipelines are up to date" in dvc(repo, env, "status")
    assert ran(dvc(repo, env, "repro")) == set()
    (repo / layout.CHECKPOINTS / "other.pth").write_bytes(b"another checkpoint")
    assert ran(dvc(repo, env, "repro")) == {"weights"}  # its record of lite0.pth unchanged: no extraction
    torch.manual_seed(1)
    torch.save(EfficientNet.from_name("efficientnet-lite0").state_dict(), checkpoint)
    assert {"weights", "extract", "train", "report"} <= ran(dvc(repo, env, "repro"))
