"""Run the frozen backbone f once over every image of every split and cache f(x) to HDF5.

Images are decoded, resized and cropped to uint8 in DataLoader workers; normalisation and the
forward pass run on the device (CUDA with bf16 autocast when present, else the CPU), in
``torch.inference_mode``, channels-last. Results are committed chunk by chunk (see
:mod:`pipeline.features`), so an interrupted extraction resumes where it stopped.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline.backbones import FeatureExtractor
from pipeline.data import BatchStream, Source, Splits
from pipeline.features import FeatureSpec, PartialFeatures


def tune_allocator() -> None:
    """Stop glibc from returning large blocks to the OS after every batch.

    Equivalent to ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>``; on this project's CPU
    machine it about doubles CPU inference throughput (see the benchmark in the README).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class _TorchBatches(torch.utils.data.IterableDataset):
    def __init__(self, stream: BatchStream):
        self.stream = stream

    def __iter__(self):
        return iter(self.stream)


def feature_spec(splits: Splits, backbone: FeatureExtractor, weights: str | None, input_size: int,
                 storage_dtype: str) -> FeatureSpec:
    settings = splits.settings
    return FeatureSpec(
        backbone=backbone.name,
        weights="none" if weights is None else str(weights),
        weights_id=backbone.weights_id,
        input_size=input_size,
        preprocessing=json.dumps(backbone.preprocessing.describe(), sort_keys=True),
        dataset_fingerprint=splits.fingerprint,
        split_seed=int(settings.get("seed", 0)),
        val_fraction=float(settings.get("val_fraction", 0.0)),
        subset_per_class=int(settings.get("subset_per_class") or -1),
        storage_dtype=storage_dtype,
        classes=tuple(splits.classes),
        feature_dim=backbone.feature_dim,
    )


def extract_features(
    splits: Splits,
    source: Source,
    backbone: FeatureExtractor,
    spec: FeatureSpec,
    out_path: str | Path,
    *,
    batch_size: int = 64,
    num_workers: int | None = None,
    skip_bad: bool = False,
    device: torch.device | None = None,
    chunk_rows: int = 1024,
    progress: bool = True,
) -> Path:
    """Compute and cache features for every split of ``splits``; resumes a partial run."""
    device = device or default_device()
    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1) if device.type == "cuda" else 0
    chunk_batches = max(1, chunk_rows // batch_size)
    partial = PartialFeatures(out_path, spec, chunk_rows=chunk_batches * batch_size)
    model = backbone.to(device).to(memory_format=torch.channels_last)
    plan = {}
    for name, split in splits.splits.items():
        n_batches = math.ceil(len(split) / batch_size)
        done = partial.done(name)
        plan[name] = [b for b in range(n_batches) if b // chunk_batches not in done]
    total = sum(min(len(splits.splits[n]), len(bs) * batch_size) for n, bs in plan.items())
    resumed = sum(len(s) for s in splits.splits.values()) - total
    if resumed:
        print(f"resuming: {resumed} images already extracted in {partial.dir}")
    bar = tqdm(total=total, unit="img", desc=f"extract {backbone.name}", disable=not progress, smoothing=0.1)
    for name, batches in plan.items():
        if not batches:
            continue
        stream = BatchStream(source, splits.splits[name].keys, batch_size, batches, backbone.preprocessing.geometry, skip_bad)
        loader = torch.utils.data.DataLoader(
            _TorchBatches(stream), batch_size=None, num_workers=num_workers,
            pin_memory=device.type == "cuda", persistent_workers=False,
        )
        pending: dict[int, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
        n_batches = math.ceil(len(splits.splits[name]) / batch_size)
        expected = iter(batches)
        split_start, split_images = time.perf_counter(), 0
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            for b, images, valid in loader:
                if b != next(expected):
                    raise RuntimeError(f"batches out of order in {name}: got {b}")
                feats = model(images.to(device, non_blocking=True)).float().cpu().numpy()
                chunk = b // chunk_batches
                pending.setdefault(chunk, {})[b] = (feats.astype(spec.storage_dtype), valid.numpy())
                in_chunk = min(chunk_batches, n_batches - chunk * chunk_batches)
                if len(pending[chunk]) == in_chunk:
                    group = pending.pop(chunk)
                    parts = [group[k] for k in sorted(group)]
                    partial.write_chunk(name, chunk, np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
                bar.update(len(images))
                split_images += len(images)
        rate = split_images / (time.perf_counter() - split_start)
        bar.write(f"{name}: {split_images} images at {rate:.1f} images/s")
    bar.close()
    return partial.assemble(spec, {n: (s.keys, s.labels) for n, s in splits.splits.items()})
