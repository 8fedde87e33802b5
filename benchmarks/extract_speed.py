"""Extraction throughput against the bare backbone's forward pass, in one run.

    python benchmarks/extract_speed.py [--backbone efficientnet_lite0] [--images 2000] [--workers 0 1 2]
                                       [--precision float32 bfloat16]

(a) the backbone alone on random uint8 batches already in memory (same batch size, input size,
    dtype, memory format and allocator settings as the pipeline);
(b) the whole extraction (read the archive, decode, resize, normalise, forward, write HDF5) on
    real images of the default dataset, for each number of decoding workers.
(b) starts after one warm-up batch, as (a) after one warm-up forward pass (start-up is well under 1%
of a full extraction). (a) and (b) alternate in ``--rounds`` rounds (each (b) on its own share of
the images), since this machine's speed drifts; prints images/s for both, per round and in total,
and the ratio (b)/(a). With several ``--precision`` values, each round runs (a) and (b) in each precision
(bfloat16: autocast, as ``backbone.precision: bfloat16``), so their ratio is measured in one run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from pipeline.backbone.backbones import load_backbone
from pipeline.backbone.extract import OnePass, extract_features, feature_spec, tune_allocator
from pipeline.core.device import describe_cpu, torch_device
from pipeline.data.sources import Split, make_splits, open_source


def bare_forward(backbone, batch_size: int, batches: int, device, precision: str = "float32") -> float:
    size = backbone.preprocessing.geometry.crop_size
    images = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, device=device)
    images = images.contiguous(memory_format=torch.channels_last)  # as the pipeline's batches come
    model = backbone.to(device).to(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
        model(images)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(batches):
            model(images).float().cpu()
        elapsed = time.perf_counter() - start
    return batches * batch_size / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="DEFAULT")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=2000, help="real images in (b): the first training images of the archive")
    parser.add_argument("--workers", type=int, nargs="+", default=[0], help="decoding processes (the pipeline uses 0 on the CPU)")
    parser.add_argument("--source", default="data/cifar10-jpeg.tar.gz")
    parser.add_argument("--rounds", type=int, default=4, help="alternations of (a) and (b)")
    parser.add_argument("--compile", action="store_true", help="also measure with backbone.compile (torch.compile)")
    parser.add_argument("--precision", nargs="+", choices=["float32", "bfloat16"], default=["float32"],
                        help="arithmetic of (a) and (b); several: alternated within each round")
    args = parser.parse_args()

    tune_allocator()
    device = torch_device()
    weights = None if args.weights.lower() == "none" else args.weights
    backbone = load_backbone(args.backbone, weights, args.input_size)
    source = open_source(args.source)
    # the first training images in archive order: (b) measures the steady state, not the one-off scan of
    # the archive up to a split's first image (about 1 s for the test split, which comes last)
    splits = make_splits(source, 0.0, None, seed=0)
    train = splits.splits["train"]
    n = min(args.images, len(train))
    splits.splits = {"test": Split(train.keys[:n], train.labels[:n])}
    specs = {p: feature_spec(splits, backbone, weights, "float32", init_seed=0, precision=p) for p in args.precision}
    spec = specs[args.precision[0]]
    print(f"device {device}, {torch.get_num_threads()} torch threads, backbone {args.backbone} at {args.input_size} px, "
          f"batch {args.batch_size}; CPU: {describe_cpu()}")

    # This machine's speed drifts over minutes: (a) and (b) alternate in rounds, each (b) on its own
    # share of the images, and the ratio is taken over the totals (and per round).
    test = splits.splits["test"]
    warm = Split(train.keys[n : n + args.batch_size], train.labels[n : n + args.batch_size])
    for warm_spec in specs.values():  # warm-up, as (a) has one forward pass before timing
        with tempfile.TemporaryDirectory() as tmp:
            extract_features(replace(splits, splits={"test": warm}), source, OnePass(backbone),
                             {"pooled": (warm_spec, Path(tmp) / "f.h5")}, batch_size=args.batch_size,
                             num_workers=args.workers[0], device=device, progress=False)
    bounds = [round(r * n / args.rounds) for r in range(args.rounds + 1)]
    for workers in args.workers:
        totals = {p: {"a_time": 0.0, "a_images": 0, "b_time": 0.0} for p in args.precision}
        for r in range(args.rounds):
            part = Split(test.keys[bounds[r] : bounds[r + 1]], test.labels[bounds[r] : bounds[r + 1]])
            batches = max(3, len(part) // args.batch_size)
            for precision, total in totals.items():
                bare = bare_forward(backbone, args.batch_size, batches, device, precision)
                total["a_time"] += batches * args.batch_size / bare
                total["a_images"] += batches * args.batch_size
                with tempfile.TemporaryDirectory() as tmp:
                    start = time.perf_counter()
                    extract_features(replace(splits, splits={"test": part}), source, OnePass(backbone),
                                     {"pooled": (specs[precision], Path(tmp) / "f.h5")}, batch_size=args.batch_size,
                                     num_workers=workers, device=device, progress=False)
                    elapsed = time.perf_counter() - start
                total["b_time"] += elapsed
                print(f"round {r + 1}, {precision}: (a) bare forward {bare:6.1f} images/s, (b) extract, {workers} worker(s) "
                      f"{len(part) / elapsed:6.1f} images/s on {len(part)} real images: {len(part) / elapsed / bare:.2f}")
        for precision, total in totals.items():
            bare, rate = total["a_images"] / total["a_time"], n / total["b_time"]
            print(f"{precision}: (a) bare forward: {bare:.1f} images/s; (b) extract: {rate:.1f} images/s on {n} images; "
                  f"(b)/(a) = {rate / bare:.2f}")
        if len(totals) > 1:
            first, *others = totals
            for precision in others:
                print(f"(b) extract in {precision} against {first}: "
                      f"{totals[first]['b_time'] / totals[precision]['b_time']:.2f} x the images/s")
    if args.compile:
        compiled = torch.compile(backbone)
        start = time.perf_counter()
        bare_forward(compiled, args.batch_size, 1, device)
        print(f"torch.compile: {time.perf_counter() - start:.1f} s to compile")
        bare_c = bare_forward(compiled, args.batch_size, max(3, n // args.batch_size), device)
        print(f"(a) bare forward, compiled: {bare_c:8.1f} images/s")
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            extract_features(splits, source, OnePass(backbone), {"pooled": (spec, Path(tmp) / "f.h5")}, batch_size=args.batch_size,
                             num_workers=args.workers[0], device=device, progress=False, compile=True)
            rate = n / (time.perf_counter() - start)
        print(f"(b) extract, compiled (compilation included): {rate:8.1f} images/s; against eager (a): {rate / bare:.2f}")


if __name__ == "__main__":
    main()
