"""Run the frozen backbone f once over every image of every split and cache f(x) to HDF5.

Images are decoded, resized and cropped to uint8 (:class:`pipeline.images.BatchStream`): on the CPU in
this process between forward passes, on CUDA in DataLoader workers (or a thread, with none). Normalisation and the forward
pass run on the device (CUDA with bf16 autocast when present, else the CPU), in
``torch.inference_mode``, channels-last. Results are committed part by part (see
:mod:`pipeline.features`), so an interrupted extraction resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import ctypes
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
from pipeline.device import torch_device
from pipeline.features import FeatureSpec, PartialFeatures
from pipeline.images import BatchStream, prefetch
from pipeline.sources import Source, Splits


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


@dataclass(frozen=True)
class Shard:
    """This process's place in a data-parallel extraction (torch.distributed, launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    barrier: Callable[[], None] = lambda: None

    def parts(self, n_parts: int) -> range:
        """The contiguous block of part indices this rank extracts."""
        return range(self.rank * n_parts // self.world_size, (self.rank + 1) * n_parts // self.world_size)


@contextlib.contextmanager
def distributed() -> Iterator[tuple[Shard, torch.device]]:
    """The shard and device of this process: from torchrun's environment (RANK, WORLD_SIZE,
    LOCAL_RANK), with NCCL on cuda:LOCAL_RANK or gloo on the CPU; a single shard otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        yield Shard(), torch_device()
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


def feature_spec(splits: Splits, backbone: FeatureExtractor, weights: str | None, storage_dtype: str,
                 init_seed: int) -> FeatureSpec:
    """What made the features: the one place a :class:`FeatureSpec` is assembled."""
    settings = splits.settings
    return FeatureSpec(
        backbone=backbone.name,
        weights="none" if weights is None else str(weights),
        weights_id=backbone.weights_id,
        input_size=backbone.preprocessing.geometry.crop_size,
        preprocessing=backbone.preprocessing.to_json(),
        dataset_fingerprint=splits.fingerprint,
        split_seed=int(settings.get("seed", 0)),
        init_seed=init_seed,
        val_fraction=float(settings.get("val_fraction", 0.0)),
        subset_per_class=int(settings.get("subset_per_class") or -1),
        storage_dtype=storage_dtype,
        classes=tuple(splits.classes),
        feature_dim=backbone.feature_dim,
        cut=backbone.cut,
        feature_shape=backbone.feature_shape,
    )


def _plan(splits: Splits, partial: PartialFeatures, shard: Shard, batch_size: int, part_batches: int
          ) -> tuple[dict[str, list[int]], int, int]:
    """The batches of each split this process still has to compute (its shard, less the intact committed
    parts), the number of images in them, and the number already committed."""
    plan, total, resumed = {}, 0, 0
    for name, split in splits.splits.items():
        n_batches = math.ceil(len(split) / batch_size)
        mine = shard.parts(math.ceil(n_batches / part_batches))
        done = partial.done(name, len(split))
        my_batches = [b for b in range(n_batches) if b // part_batches in mine]
        plan[name] = [b for b in my_batches if b // part_batches not in done]
        rows = lambda batches: sum(min(batch_size, len(split) - b * batch_size) for b in batches)  # noqa: E731
        total += rows(plan[name])
        resumed += rows(my_batches) - rows(plan[name])
    return plan, total, resumed


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
    commit_rows: int = 1024,
    progress: bool = True,
    shard: Shard | None = None,
    compile: bool = False,
) -> Path | None:
    """Compute and cache features for every split of ``splits``; resumes a partial run.

    With a :class:`Shard` (one process of a distributed run), this process extracts only its
    contiguous share of each split's parts; rank 0 assembles the file once every rank is done and
    returns its path, the other ranks return None.
    """
    shard = shard or Shard()
    device = device or torch_device()
    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1) if device.type == "cuda" else 0
    part_batches = max(1, commit_rows // batch_size)
    compute = ("cuda-bfloat16" if device.type == "cuda" else f"{device.type}-float32") + ("-compiled" if compile else "")
    if shard.rank == 0:  # rank 0 alone decides whether an earlier partial run can be resumed
        partial = PartialFeatures(out_path, spec, part_batches * batch_size, compute)
    shard.barrier()
    if shard.rank != 0:
        partial = PartialFeatures(out_path, spec, part_batches * batch_size, compute)
    model = backbone.to(device).to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model)
    plan, total, resumed = _plan(splits, partial, shard, batch_size, part_batches)
    who = f" [rank {shard.rank}/{shard.world_size}]" if shard.world_size > 1 else ""
    if resumed:
        print(f"resuming{who}: {resumed} images already extracted in {partial.dir}", flush=True)

    def compute(plan: dict[str, list[int]], total: int) -> None:
        bar = tqdm(total=total, unit="img", desc=f"extract {backbone.name}{who}",
                   disable=not progress or shard.rank != 0, smoothing=0.1)
        for name, batches in plan.items():
            if batches:
                stream = BatchStream(source, splits.splits[name].keys, batch_size, batches,
                                     backbone.preprocessing.geometry, skip_bad)
                images, seconds = _extract_split(name, stream, model, partial, device, num_workers, part_batches,
                                                 len(splits.splits[name]), spec.storage_dtype, compile, bar)
                if shard.rank == 0:
                    bar.write(f"{name}: {images} images at {images / seconds:.1f} images/s"
                              + (" (rank 0)" if shard.world_size > 1 else ""))
        bar.close()

    compute(plan, total)
    shard.barrier()  # every rank's parts are committed
    if shard.rank != 0:
        return None
    # parts lost since the plan (deleted, damaged) are computed again here rather than failing the assembly
    plan, total, _ = _plan(splits, partial, Shard(), batch_size, part_batches)
    if total:
        print(f"computing again {total} images whose parts went missing from {partial.dir}", flush=True)
        compute(plan, total)
    return partial.assemble(spec, {n: (s.keys, s.labels) for n, s in splits.splits.items()})


def _extract_split(name: str, stream: BatchStream, model, partial: PartialFeatures, device: torch.device,
                   num_workers: int, part_batches: int, n_images: int, storage_dtype: str, compile: bool, bar
                   ) -> tuple[int, float]:
    """Run the model over the planned batches of one split, committing each part once all its batches
    are done. Returns the images computed and the seconds taken."""
    batch_size = stream.batch_size
    loader = torch.utils.data.DataLoader(
        _TorchBatches(stream), batch_size=None, num_workers=num_workers,
        pin_memory=device.type == "cuda", persistent_workers=False,
    )
    pending: dict[int, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
    n_batches = math.ceil(n_images / batch_size)
    expected = iter(stream.batches)
    start, done = time.perf_counter(), 0
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
            part = b // part_batches
            pending.setdefault(part, {})[b] = (feats.astype(storage_dtype), valid.numpy())
            if len(pending[part]) == min(part_batches, n_batches - part * part_batches):
                group = pending.pop(part)
                rows = [group[k] for k in sorted(group)]
                partial.write_part(name, part, np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows]))
            bar.update(n)
            done += n
    return done, time.perf_counter() - start
