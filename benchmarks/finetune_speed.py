"""Fine-tuning speed per epoch under each setting that may make it cheaper, as ratios measured in one run.

    python benchmarks/finetune_speed.py [--maps 2048] [--rounds 3] [--backbone efficientnet_lite0]
                                        [--cut _blocks.12 [_blocks.14 ...]] [--only SETTING ...]

Trains the real top above the cut (pretrained weights) through the fine-tuned head's own training loop
(``run_epochs`` with the head's loss and train mode) on random maps of the cut's shape, once per setting and round, the
settings (and cuts, with several ``--cut``) alternating so that the machine's drift affects them alike.
Prints images/s of each setting and its ratio to the first (by default: float32 with the depthwise kernels
trained, batch 64, eager, at the first cut). bfloat16 (the dense layers in bfloat16) is marked "emulated"
on a CPU without native bfloat16 (there it measures the emulation, not a speed-up).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pipeline.backbone.backbones import load_backbone  # noqa: E402
from pipeline.core.config import FinetuneParams  # noqa: E402
from pipeline.core.device import describe_cpu, native_bfloat16, torch_device  # noqa: E402
from pipeline.finetune.head import FinetuneHead  # noqa: E402
from pipeline.heads.base import FitRecord  # noqa: E402
from pipeline.heads.epochs import run_epochs  # noqa: E402

SETTINGS = {  # name -> (FinetuneParams changes, compile the network)
    "float32, depthwise trained": ({"precision": "float32", "depthwise": "train"}, False),
    "float32, depthwise frozen": ({"precision": "float32", "depthwise": "frozen"}, False),
    "bfloat16, depthwise trained": ({"precision": "bfloat16", "depthwise": "train"}, False),
    "bfloat16, depthwise frozen": ({"precision": "bfloat16", "depthwise": "frozen"}, False),
    "bfloat16, depthwise frozen, batch 256": ({"precision": "bfloat16", "depthwise": "frozen", "batch_size": 256}, False),
    "bfloat16, depthwise frozen, compiled": ({"precision": "bfloat16", "depthwise": "frozen"}, True),
}


def epoch_rate(recipe: dict, maps: np.ndarray, labels: np.ndarray, changes: dict, compile: bool) -> float:
    """Images/s of one epoch of the head's training loop over ``maps``."""
    head = FinetuneHead(FinetuneParams(epochs=1, **changes), seed=0)
    head.n_classes, head.fitted = 10, FitRecord(backbone=recipe, precision=changes.get("precision", "float32"))
    device = torch_device()
    net, opt, schedule = head._build(len(maps), device)
    def one_epoch(n: int, seed: int) -> None:  # the head's own epoch loop, loss and train mode
        batches = head._batches(lambda a, b: (maps[a:b], labels[a:b]), n, 256, 1 << 30, torch.Generator().manual_seed(seed))
        run_epochs(net, opt, schedule, 1, lambda _: head._on_device(batches, device),
                   head._loss(torch.Generator().manual_seed(seed), device), head._train_mode)

    if compile:
        net = torch.compile(net)
        one_epoch(2 * head.params.batch_size, 1)  # compiles before timing
    start = time.perf_counter()
    one_epoch(len(maps), 0)
    return len(maps) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--cut", nargs="+", default=["_blocks.12"], help="several: each is trained, alternating")
    parser.add_argument("--maps", type=int, default=2048, help="training maps per epoch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", action="append", help="settings to measure (default: all)")
    args = parser.parse_args()
    device = torch_device()
    print(f"CPU: {describe_cpu()}; {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; device {device}")
    backbone = load_backbone(args.backbone, "DEFAULT", args.input_size)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, args.maps)
    trained = {}  # cut -> (recipe, maps)
    for cut in args.cut:
        bottom, _ = backbone.cut_at(cut)
        recipe = {"backbone": args.backbone, "weights": "DEFAULT", "weights_id": backbone.weights_id,
                  "input_size": args.input_size, "init_seed": 0, "cut": cut,
                  "preprocessing": backbone.preprocessing.to_json()}
        trained[cut] = recipe, rng.normal(0, 1, (args.maps, *bottom.feature_shape)).astype(np.float16)
        print(f"{args.backbone} above {cut}: maps {bottom.feature_shape} float16, {args.maps} per epoch")
    runs = [(cut, name) for cut in args.cut for name in (args.only or list(SETTINGS))]
    label = {run: (f"{run[0]}: " if len(args.cut) > 1 else "") + run[1] for run in runs}
    rates: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
    for r in range(args.rounds):
        for run in runs:
            recipe, maps = trained[run[0]]
            rates[run].append(epoch_rate(recipe, maps, labels, *SETTINGS[run[1]]))
            print(f"round {r + 1}: {label[run]:40s} {rates[run][-1]:7.1f} images/s", flush=True)
    base = np.sum(rates[runs[0]])
    print()
    for run in runs:
        emulated = " (bfloat16 emulated: no native support here)" if "bfloat16" in run[1] and not native_bfloat16(device) else ""
        print(f"{label[run]:40s} {np.mean(rates[run]):7.1f} images/s, {np.sum(rates[run]) / base:.2f} x {label[runs[0]]}{emulated}")


if __name__ == "__main__":
    main()
