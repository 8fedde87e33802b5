"""Extraction throughput with 1 and more processes (torchrun), in one run.

    python benchmarks/extract_processes.py [--per-class 100] [--nproc 1 2]

Runs ``prepare`` once, then the extract stage under ``torchrun --nproc_per_node=N`` for each N (each
process gets ``OMP_NUM_THREADS = cores / N`` threads), and prints wall time and images/s. On a CPU this
shows the overhead of sharding, not a speed-up: the processes share the same cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params["data"]["source"] = str(ROOT / params["data"]["source"])
        params["data"]["subset_per_class"] = args.per_class
        (Path(tmp) / "params.yaml").write_text(yaml.safe_dump(params))
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        # the stages read params.yaml and write the paths of pipeline/core/layout.py, under the working folder
        subprocess.run([sys.executable, "-m", "pipeline.stages.prepare"], check=True, env=env, capture_output=True, cwd=tmp)
        for n in args.nproc:
            threads = max(1, (os.cpu_count() or 1) // n)
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                   "-m", "pipeline.stages.extract", "--no-progress"]
            start = time.perf_counter()
            done = subprocess.run(cmd, check=True, env=dict(env, OMP_NUM_THREADS=str(threads)), capture_output=True, text=True,
                                  cwd=tmp)
            seconds = time.perf_counter() - start
            images = int(done.stdout.split("extracted ")[1].split()[0])
            print(f"{n} process(es) x {threads} thread(s): {images} images in {seconds:.1f} s = {images / seconds:.1f} "
                  "images/s (process start-up included)", flush=True)


if __name__ == "__main__":
    main()
