"""Run the frozen backbone f once over every image of every split and cache f(x) to HDF5.

Images are decoded, resized and cropped to uint8 (:class:`pipeline.data.BatchStream`): on the CPU in
this process between forward passes, on CUDA in DataLoader workers (or a thread, with none). Normalisation and the forward
pass run on the device (CUDA with bf16 autocast when present, else the CPU), in
``torch.inference_mode``, channels-last. Results are committed chunk by chunk (see
:mod:`pipeline.features`), so an interrupted extraction resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from pipeline.backbones import FeatureExtractor
from pipeline.data import BatchStream, Source, Splits, prefetch
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


@dataclass(frozen=True)
class Shard:
    """This process's place in a data-parallel extraction (torch.distributed, launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    barrier: Callable[[], None] = lambda: None

    def chunks(self, n_chunks: int) -> range:
        """The contiguous block of chunk indices this rank extracts."""
        return range(self.rank * n_chunks // self.world_size, (self.rank + 1) * n_chunks // self.world_size)


@contextlib.contextmanager
def distributed() -> Iterator[tuple[Shard, torch.device]]:
    """The shard and device of this process: from torchrun's environment (RANK, WORLD_SIZE,
    LOCAL_RANK), with NCCL on cuda:LOCAL_RANK or gloo on the CPU; a single shard otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        yield Shard(), default_device()
        return
    import datetime

    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # ranks wait for each other at the end of extraction: allow for uneven shards
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(hours=12))
    try:
        yield Shard(dist.get_rank(), dist.get_world_size(), dist.barrier), device
    finally:
        dist.destroy_process_group()


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
        cut=backbone.cut,
        feature_shape=backbone.feature_shape,
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
    shard: Shard | None = None,
    compile: bool = False,
) -> Path | None:
    """Compute and cache features for every split of ``splits``; resumes a partial run.

    With a :class:`Shard` (one process of a distributed run), this process extracts only its
    contiguous share of each split's chunks; rank 0 assembles the file once every rank is done and
    returns its path, the other ranks return None.
    """
    shard = shard or Shard()
    device = device or default_device()
    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1) if device.type == "cuda" else 0
    chunk_batches = max(1, chunk_rows // batch_size)
    compute = ("cuda-bfloat16" if device.type == "cuda" else f"{device.type}-float32") + ("-compiled" if compile else "")
    if shard.rank == 0:  # rank 0 alone decides whether an earlier partial run can be resumed
        partial = PartialFeatures(out_path, spec, chunk_batches * batch_size, compute)
    shard.barrier()
    if shard.rank != 0:
        partial = PartialFeatures(out_path, spec, chunk_batches * batch_size, compute)
    model = backbone.to(device).to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model)
    plan, total, resumed = {}, 0, 0
    for name, split in splits.splits.items():
        n_batches = math.ceil(len(split) / batch_size)
        mine = shard.chunks(math.ceil(n_batches / chunk_batches))
        done = partial.done(name)
        my_batches = [b for b in range(n_batches) if b // chunk_batches in mine]
        plan[name] = [b for b in my_batches if b // chunk_batches not in done]
        rows = lambda batches: sum(min(batch_size, len(split) - b * batch_size) for b in batches)  # noqa: E731
        total += rows(plan[name])
        resumed += rows(my_batches) - rows(plan[name])
    who = f" [rank {shard.rank}/{shard.world_size}]" if shard.world_size > 1 else ""
    if resumed:
        print(f"resuming{who}: {resumed} images already extracted in {partial.dir}", flush=True)
    desc = f"extract {backbone.name}{who}"
    bar = tqdm(total=total, unit="img", desc=desc, disable=not progress or shard.rank != 0, smoothing=0.1)
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
            # on the CPU decoding runs between forward passes (the forward pass holds every core); on a GPU
            # without worker processes a thread decodes the next batch while the device runs this one
            for b, images, valid in (loader if num_workers or device.type == "cpu" else prefetch(loader)):
                if b != next(expected):
                    raise RuntimeError(f"batches out of order in {name}: got {b}")
                n = len(images)
                if compile and n < batch_size:  # one shape only: a smaller last batch would recompile
                    images = torch.cat([images, images.new_zeros((batch_size - n, *images.shape[1:]))])
                feats = model(images.to(device, non_blocking=True))[:n].float().cpu().numpy()
                chunk = b // chunk_batches
                pending.setdefault(chunk, {})[b] = (feats.astype(spec.storage_dtype), valid.numpy())
                in_chunk = min(chunk_batches, n_batches - chunk * chunk_batches)
                if len(pending[chunk]) == in_chunk:
                    group = pending.pop(chunk)
                    parts = [group[k] for k in sorted(group)]
                    partial.write_chunk(name, chunk, np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
                bar.update(n)
                split_images += n
        rate = split_images / (time.perf_counter() - split_start)
        if shard.rank == 0:
            bar.write(f"{name}: {split_images} images at {rate:.1f} images/s" + (" (rank 0)" if shard.world_size > 1 else ""))
    bar.close()
    shard.barrier()  # every rank's chunks are committed
    if shard.rank != 0:
        return None
    return partial.assemble(spec, {n: (s.keys, s.labels) for n, s in splits.splits.items()})
