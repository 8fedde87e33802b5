"""Time from a head params edit to new metrics, against the first full run, in one run.

    python benchmarks/head_swap.py [--subset-per-class N] [--workdir DIR]

Copies the project into a fresh git repository, runs the full default ``dvc repro`` once, then for
each of the logistic, linear and ridge heads changes only ``head.*`` in params.yaml and times
``dvc repro`` again. Prints the wall times, their ratio to the first run, and checks from DVC's own
record (dvc.lock) and the files' sha256 that neither the features nor the cut cache were recomputed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
FILES = ["dvc.yaml", "params.yaml", "pyproject.toml", "pipeline", "data/cifar10-jpeg.tar.gz", ".dvc/config", ".dvcignore",
         ".gitignore", "evaluation/heads/.gitkeep", "evaluation/finetune/.gitkeep"]


def run(cmd: list[str], cwd: Path) -> tuple[float, str]:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{cmd} failed:\n{result.stdout}\n{result.stderr}")
    return time.perf_counter() - start, result.stdout + result.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subset-per-class", type=int, default=None, help="default: the full dataset")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse the first run already made in --workdir (its project and its recorded time)")
    args = parser.parse_args()
    repo = (args.workdir or Path(tempfile.mkdtemp(prefix="head-swap-"))) / "project"
    if args.reuse:
        reuse(repo)
        return
    copy_project(repo)
    set_subset(repo, args.subset_per_class)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "benchmark"]):
        run(cmd, repo)

    first, _ = run(DVC_REPRO, repo)
    (repo / "first_run_seconds.txt").write_text(f"{first}\n")
    swap_heads(repo, first)


def reuse(repo: Path) -> None:
    """Bring the first run's project up to date with this checkout's code, then swap heads."""
    subset = yaml.safe_load((repo / "params.yaml").read_text())["data"]["subset_per_class"]
    copy_project(repo)
    set_subset(repo, subset)
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "update", "--allow-empty"], repo)
    run(DVC_REPRO, repo)
    swap_heads(repo, float((repo / "first_run_seconds.txt").read_text()))


def copy_project(repo: Path) -> None:
    for name in FILES:
        src, dst = ROOT / name, repo / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)


def set_subset(repo: Path, subset: int | None) -> None:
    params_path = repo / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["data"]["subset_per_class"] = subset
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))


DVC_REPRO = [sys.executable, "-m", "dvc", "repro"]


def swap_heads(repo: Path, first: float) -> None:
    params_path = repo / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    # the pooled features and the cut cache, and DVC's record of the stages that wrote them
    features = sorted((repo / "data" / "features").glob("*.h5"))
    digests = [hashlib.sha256(f.read_bytes()).hexdigest() for f in features]
    extract_stages = {k: v for k, v in yaml.safe_load((repo / "dvc.lock").read_text())["stages"].items() if k.startswith("extract")}
    print(f"first dvc repro (all stages: {len(params['heads'])} compared heads, {len(params.get('finetune') or {})} "
          f"fine-tuned): {first:.1f} s  [{repo}]")

    changes = [("logistic", {"kind": "logistic", "logistic": {**params["head"]["logistic"], "C": 0.002}}),
               ("linear", {"kind": "linear"}), ("ridge", {"kind": "ridge"})]
    for label, change in changes:
        params["head"] = {**params["head"], **change}
        params_path.write_text(yaml.safe_dump(params, sort_keys=False))
        seconds, out = run(DVC_REPRO, repo)
        locked = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
        untouched = (
            "Running stage 'extract" not in out
            and all(locked[k] == v for k, v in extract_stages.items())
            and [hashlib.sha256(f.read_bytes()).hexdigest() for f in features] == digests
        )
        ran = [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")]
        print(f"head -> {label:8s}: dvc repro {seconds:5.1f} s = 1/{first / seconds:.0f} of the first run; "
              f"features recomputed: {'no' if untouched else 'YES'}; stages run: {', '.join(ran)}")


if __name__ == "__main__":
    main()
