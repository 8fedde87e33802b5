"""The fine-tuned top against the main head on the same run's pooled features, in one run.

    python benchmarks/finetune_gain.py [--subset-per-class 1000] [--config top] [--workdir DIR]

Runs the pipeline's own stages with params.yaml (``data.subset_per_class`` overridden; 0 = all
images): prepare, extract (pooled features and the cut cache at backbone.cut, in one pass), the main head (``head``,
logistic by default) and ``finetune.<config>``, each evaluated by the evaluate stage. Prints both
test top-1 figures from the written metrics.json files, their difference, the stage times and the
fine-tune time per epoch.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from pipeline.core.config import load_params
from pipeline.stages import evaluate, extract, prepare, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subset-per-class", type=int, default=1000, help="0: all images")
    parser.add_argument("--config", default="top", help="the finetune.<name> configuration to train")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory")
    args = parser.parse_args()
    params = load_params(args.params)
    params = params.model_copy(update={"data": params.data.model_copy(update={"subset_per_class": args.subset_per_class or None})})
    work = args.workdir or Path(tempfile.mkdtemp(prefix="finetune-gain-"))
    splits = work / "splits.json"
    seconds = {}

    def timed(name, fn, *a, **kw):
        start = time.perf_counter()
        fn(*a, **kw)
        seconds[name] = time.perf_counter() - start

    timed("prepare", prepare.run, params, splits)
    timed("extract", extract.run, params, splits, work / "pooled.h5", work / "cut.h5", progress=False)
    timed("train (head)", train.run, params, work / "pooled.h5", splits, work / "head.npz")
    evaluate.run(work / "pooled.h5", work / "head.npz", work / "eval-head", name="head")
    trained = train.run(params, work / "cut.h5", splits, work / "finetune.npz", key=f"finetune.{args.config}")
    evaluate.run(work / "cut.h5", work / "finetune.npz", work / "eval-finetune", name=args.config)

    head = json.loads((work / "eval-head" / "metrics.json").read_text())
    tuned = json.loads((work / "eval-finetune" / "metrics.json").read_text())
    n = {s: tuned[s]["n"] for s in ("val", "test")}
    print(f"\n{params.backbone.name} at {params.backbone.input_size} px, subset_per_class "
          f"{args.subset_per_class or 'all'}, cut at {params.backbone.cut}; val {n['val']}, test {n['test']} images")
    for name, s in seconds.items():
        print(f"  {name:13s} {s:7.1f} s")
    print(f"  finetune      {trained['fit_seconds']:7.1f} s, {trained['seconds_per_epoch']:.1f} s per epoch")
    print(f"head ({head['head']}) test top-1      {head['test']['top1']:.4f}")
    print(f"finetune.{args.config} test top-1   {tuned['test']['top1']:.4f}")
    print(f"difference: {100 * (tuned['test']['top1'] - head['test']['top1']):+.2f} points (outputs in {work})")


if __name__ == "__main__":
    main()
