"""Peak memory of the extract stage at two dataset sizes, in one run.

    python benchmarks/extract_memory.py [--per-class 300 0]      # 0 = the whole dataset

For each size, runs ``prepare`` and ``extract`` of the default params (with ``data.subset_per_class``)
as child processes in a temporary directory and prints the number of images, the wall time, images/s
and the peak resident memory of the extract process (its ``ru_maxrss``).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, nargs="+", default=[300, 0])
    args = parser.parse_args()
    for per_class in args.per_class:
        with tempfile.TemporaryDirectory() as tmp:
            params = yaml.safe_load((ROOT / "params.yaml").read_text())
            params["data"]["source"] = str(ROOT / params["data"]["source"])
            params["data"]["subset_per_class"] = per_class or None
            (Path(tmp) / "params.yaml").write_text(yaml.safe_dump(params))
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            # the stages read params.yaml and write the paths of pipeline/core/layout.py, under the working folder
            subprocess.run([sys.executable, "-m", "pipeline.stages.prepare"], check=True, env=env, capture_output=True, cwd=tmp)
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "pipeline.stages.extract", "--no-progress"],
                                  check=True, env=env, capture_output=True, text=True, cwd=tmp)
            seconds = time.perf_counter() - start
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            n = int(done.stdout.split("extracted ")[1].split()[0])
            note = "" if peak > before else " (not above an earlier child's peak)"
            print(f"{n:6d} images: extract {seconds:6.1f} s ({n / seconds:.1f} images/s), peak RSS {peak / 1024:.0f} MiB{note}",
                  flush=True)


if __name__ == "__main__":
    main()
