"""End to end: the real DVC pipeline in a temporary git repository, on a small real subset."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

PROJECT_FILES = ["dvc.yaml", "params.yaml", "pyproject.toml", "pipeline", "data/cifar10-jpeg.tar.gz", ".dvc/config",
                 ".dvc/.gitignore", ".gitignore"]


def sh(cmd: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture
def project(tmp_path) -> tuple[Path, dict]:
    repo = tmp_path / "project"
    repo.mkdir()
    for name in PROJECT_FILES:
        src, dst = ROOT / name, repo / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["subset_per_class"] = 6
    params["backbone"]["batch_size"] = 32
    params["heads"] = {"ridge": {"kind": "ridge"}, "centroid": {"kind": "nearest_centroid"}}
    params["finetune"]["top"]["epochs"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.pop("PYTHONPATH", None)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        sh(cmd, repo, env)
    return repo, env


def lock_entry(repo: Path, stage: str) -> dict:
    return yaml.safe_load((repo / "dvc.lock").read_text())["stages"][stage]


def test_dvc_repro_then_head_change_reruns_only_head_stages(project):
    repo, env = project
    out = sh([sys.executable, "-m", "dvc", "repro"], repo, env)
    for stage in ("prepare", "extract", "train", "evaluate", "train-heads@ridge", "evaluate-heads@centroid",
                  "extract-cut", "finetune@top", "evaluate-finetune@top", "compare"):
        assert f"Running stage '{stage}'" in out
    features = repo / "data" / "features" / "efficientnet_lite0-224px.h5"
    digest = hashlib.sha256(features.read_bytes()).hexdigest()
    extract_lock = lock_entry(repo, "extract")
    metrics = json.loads((repo / "evaluation" / "metrics.json").read_text())
    assert metrics["head"] == "logistic"
    assert metrics["test"]["n"] == 60 and metrics["val"]["n"] == 10
    assert metrics["test"]["top1"] > 0.4  # real ImageNet features on 10 classes (chance: 0.1)
    assert (repo / "evaluation" / "confusion.png").stat().st_size > 0
    shown = json.loads(sh([sys.executable, "-m", "dvc", "metrics", "show", "--json"], repo, env))
    files = next(iter(shown.values()))["data"]  # keyed by revision ("" for the workspace)
    assert {"evaluation/metrics.json", "evaluation/heads/ridge/metrics.json", "evaluation/heads/centroid/metrics.json",
            "evaluation/finetune/top/metrics.json"} <= set(files)
    table = (repo / "evaluation" / "comparison.md").read_text()
    assert all(f"| {name} |" in table for name in ("head", "ridge", "centroid", "top"))
    cut_cache = repo / "data" / "features" / "efficientnet_lite0-224px-cut-_blocks.12.h5"
    cut_digest = hashlib.sha256(cut_cache.read_bytes()).hexdigest()
    assert (repo / "evaluation" / "comparison.png").stat().st_size > 0

    sh(["git", "add", "-A"], repo, env)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first run"], repo, env)
    out = sh([sys.executable, "-m", "dvc", "exp", "run", "-S", "head.kind=ridge"], repo, env)  # as in the README
    assert "Running stage 'train'" in out and "Running stage 'evaluate'" in out
    assert "Running stage 'extract'" not in out and "Running stage 'prepare'" not in out
    assert "Running stage 'train-heads" not in out  # the compared heads are untouched
    assert "Running stage 'extract-cut'" not in out and "Running stage 'finetune@top'" not in out
    assert lock_entry(repo, "extract") == extract_lock  # DVC's own record of extract is unchanged
    assert hashlib.sha256(features.read_bytes()).hexdigest() == digest
    metrics = json.loads((repo / "evaluation" / "metrics.json").read_text())
    assert metrics["head"] == "ridge"
    assert lock_entry(repo, "train")["params"]["params.yaml"]["head"]["kind"] == "ridge"

    # a fine-tune param re-runs only that head; a new cut only the cut cache (and what is trained on it)
    out = sh([sys.executable, "-m", "dvc", "exp", "run", "-S", "finetune.top.lr_top=0.001"], repo, env)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"finetune@top", "evaluate-finetune@top", "compare"}
    assert hashlib.sha256(cut_cache.read_bytes()).hexdigest() == cut_digest
    out = sh([sys.executable, "-m", "dvc", "exp", "run", "-S", "backbone.cut=_blocks.14"], repo, env)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"extract-cut", "finetune@top", "evaluate-finetune@top", "compare"}
    assert "cut cache at the input of _blocks.14: 120 images x 192x7x7 float16 = 0.00 GiB" in out  # said before extracting
