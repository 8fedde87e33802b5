"""A head swap as a user types it, against the first full run, in one run.

    python benchmarks/head_swap.py [--subset-per-class N] [--workdir DIR] [--repeat N]
    python benchmarks/head_swap.py --project DIR --first-run-seconds S   # a project whose dvc repro is done

Copies the project into a fresh git repository and runs the full default ``dvc repro`` once (timed),
unless ``--project`` names a project already run (then ``--first-run-seconds`` is its first run's time).
Then, from that committed baseline each time, it times ``dvc exp run -S <setting>`` for
``head.kind=ridge``, ``head.logistic.C=0.002`` and ``head.kind=linear`` (the baseline is restored between
them, untimed: ``git checkout params.yaml``, then ``dvc repro``, which fits the main head again), each
``--repeat`` times. Prints the CPU, each wall time and the median, their ratio to the first run, the stages
that ran, and checks from DVC's own record (dvc.lock) and the files' sha256 that neither the features nor the
cut cache were recomputed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.core import layout  # noqa: E402
from pipeline.core.device import describe_cpu  # noqa: E402

SWAPS = ["head.kind=ridge", "head.logistic.C=0.002", "head.kind=linear"]
DVC = [sys.executable, "-m", "dvc"]


def run(cmd: list[str], cwd: Path) -> tuple[float, str]:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("PYTHONPATH", None)
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{cmd} failed:\n{result.stdout}\n{result.stderr}")
    return time.perf_counter() - start, result.stdout + result.stderr


def git(repo: Path, *args: str) -> None:
    run(["git", "-c", "user.name=b", "-c", "user.email=b@b", *args], repo)


def make_project(repo: Path, subset: int | None) -> float:
    """A fresh copy of this checkout in ``repo``, committed, and its first ``dvc repro``; returns its seconds."""
    for name in layout.PROJECT_FILES:
        src, dst = ROOT / name, repo / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)
    params_path = repo / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["data"]["subset_per_class"] = subset
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "benchmark")
    first, _ = run([*DVC, "repro"], repo)
    return first


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def swap_heads(repo: Path, first: float, repeat: int) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "first run", "--allow-empty")
    features = sorted((repo / "data" / "features").glob("*.h5"))
    digests = [sha256(f) for f in features]
    extract = {k: v for k, v in yaml.safe_load((repo / "dvc.lock").read_text())["stages"].items() if k.startswith("extract")}
    print(f"CPU: {describe_cpu()}")
    print(f"first dvc repro: {first:.1f} s  [{repo}]")
    for setting in SWAPS:
        times = []
        for _ in range(repeat):
            seconds, out = run([*DVC, "exp", "run", "-S", setting], repo)
            times.append(seconds)
            locked = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
            untouched = ("Running stage 'extract" not in out and all(locked[k] == v for k, v in extract.items())
                         and [sha256(f) for f in features] == digests)
            ran = [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")]
            print(f"dvc exp run -S {setting:22s} {seconds:5.1f} s = 1/{first / seconds:.0f} of the first run; "
                  f"features recomputed: {'no' if untouched else 'YES'}; stages run: {', '.join(ran)}", flush=True)
            run(["git", "checkout", "-q", "--", "params.yaml"], repo)  # back to the baseline, untimed
            run([*DVC, "repro"], repo)
        if repeat > 1:
            median = statistics.median(times)
            print(f"  median of {repeat}: {median:.1f} s = 1/{first / median:.0f} of the first run "
                  f"(fastest {min(times):.1f} s, slowest {max(times):.1f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subset-per-class", type=int, default=None, help="default: the full dataset")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory")
    parser.add_argument("--project", type=Path, default=None, help="a project whose first dvc repro is done")
    parser.add_argument("--first-run-seconds", type=float, default=None, help="with --project: its first run's time")
    parser.add_argument("--repeat", type=int, default=3, help="times each swap runs, its median printed (default 3: "
                        "a 2-core cloud machine's swaps vary by a third from one to the next)")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, not {args.repeat}")
    if args.project:
        if args.first_run_seconds is None:
            parser.error("--project needs --first-run-seconds (the time of that project's first dvc repro)")
        swap_heads(args.project.resolve(), args.first_run_seconds, args.repeat)
        return
    repo = (args.workdir or Path(tempfile.mkdtemp(prefix="head-swap-"))) / "project"
    repo.mkdir(parents=True)
    swap_heads(repo, make_project(repo, args.subset_per_class), args.repeat)


if __name__ == "__main__":
    main()
