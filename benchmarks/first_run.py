"""The first `dvc repro` of a fresh clone, stage by stage; several revisions back to back.

    python benchmarks/first_run.py [--rev REV ...] [--subset-per-class N] [--workdir DIR]

For each revision (default: HEAD), in the order given: clones this repository at that revision into a
fresh directory, runs the default ``dvc repro`` there (that clone's own code: PYTHONPATH points at it)
and prints each stage's wall time, the extraction's images/s, when the first metric appeared (the
main head's evaluate stage), the peak resident memory of the largest process, and the test top-1 of
the main head and of the fine-tuned heads. Then the time of each revision against the first. The CPU
(model, cores, native bfloat16) is printed first: the figures hold for that machine only. The whole
``dvc repro`` output of each revision is written beside its clone (``DIR/0-REV.log``) as it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.device import describe_cpu  # noqa: E402

PEAK_RSS = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
            "print(f'peak-rss-kib {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}', flush=True); sys.exit(code)")
"""Runs a command and prints the largest peak resident memory among the processes it waited for."""


def clone(rev: str, dest: Path) -> str:
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    subprocess.run(["git", "-C", str(dest), "checkout", "-q", rev], check=True)
    return subprocess.run(["git", "-C", str(dest), "rev-parse", "--short", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


def set_subset(project: Path, subset: int | None) -> None:
    if subset is None:
        return
    import yaml

    params_path = project / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["data"]["subset_per_class"] = subset
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "-C", str(project), "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qam", "subset"],
                   check=True)


def repro(project: Path) -> dict:
    """Run ``dvc repro`` in ``project``; the time each stage started, the log, the peak memory."""
    env = dict(os.environ, PYTHONPATH=str(project),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    start = time.perf_counter()
    starts, lines, peak_kib = [], [], 0
    with subprocess.Popen([sys.executable, "-c", PEAK_RSS, sys.executable, "-m", "dvc", "repro"], cwd=project, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc, \
            open(project.parent / f"{project.name}.log", "w") as log:  # kept if this script is stopped
        for line in proc.stdout:
            now = time.perf_counter() - start
            lines.append(line)
            log.write(line)
            if line.startswith("Running stage"):
                starts.append((line.split("'")[1], now))
                print(f"  {now:7.1f} s  {line.strip()}", flush=True)
            elif line.startswith("peak-rss-kib"):
                peak_kib = int(line.split()[1])
    total = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"dvc repro failed in {project}:\n{''.join(lines[-40:])}")
    stages = {name: (ends - began) for (name, began), ends in zip(starts, [s for _, s in starts[1:]] + [total])}
    ends = {name: began + stages[name] for name, began in starts}
    return {"total": total, "stages": stages, "ends": ends, "log": "".join(lines), "peak_gib": peak_kib / 2**20}


def top1(project: Path) -> dict[str, float]:
    """Test top-1 of the main head and of every fine-tuned head of the run."""
    found = {"head": project / "evaluation" / "metrics.json"}
    found |= {f"finetune.{p.parent.name}": p for p in (project / "evaluation" / "finetune").glob("*/metrics.json")}
    return {name: json.loads(p.read_text())["test"]["top1"] for name, p in found.items() if p.exists()}


def report(rev: str, run: dict, accuracy: dict[str, float]) -> None:
    print(f"\nrevision {rev}: dvc repro took {run['total']:.1f} s ({run['total'] / 60:.1f} min), "
          f"peak resident memory {run['peak_gib']:.2f} GiB")
    for name, seconds in run["stages"].items():
        print(f"  {name:32s} {seconds:8.1f} s")
    rates = re.findall(r"^(\w+): (\d+) images at ([\d.]+) images/s", run["log"], flags=re.M)
    for split, n, rate in rates:
        print(f"  extraction, {split:5s}: {n:>6s} images at {rate} images/s")
    if "train" in run["ends"]:  # the train stage fits the main head, then evaluates it
        first = run["ends"]["train"]
        print(f"  first metric (evaluation/metrics.json) after {first:.1f} s: {first / run['total']:.0%} of the run")
    for name, value in accuracy.items():
        print(f"  test top-1 {name:20s} {value:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", action="append", help="git revision to measure (repeat; default: HEAD)")
    parser.add_argument("--subset-per-class", type=int, default=None, help="default: the whole dataset")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="first-run-"))
    print(f"CPU: {describe_cpu()}; {os.cpu_count()} cores; subset_per_class {args.subset_per_class or 'all'}")
    totals = {}
    for i, rev in enumerate(args.rev or ["HEAD"]):
        project = work / f"{i}-{re.sub(r'[^A-Za-z0-9_.-]', '_', rev)}"
        sha = clone(rev, project)
        set_subset(project, args.subset_per_class)
        print(f"\n{rev} ({sha}) in {project}:", flush=True)
        run = repro(project)
        report(f"{rev} ({sha})", run, top1(project))
        totals[f"{rev} ({sha})"] = run["total"]
    if len(totals) > 1:
        first_rev, first_total = next(iter(totals.items()))
        print()
        for rev, total in totals.items():
            print(f"{rev}: {total:.1f} s, {total / first_total:.2f} x {first_rev}")


if __name__ == "__main__":
    main()
