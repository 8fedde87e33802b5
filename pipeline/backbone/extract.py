"""Run the frozen backbone f once over every image of every split and cache f(x) to HDF5.

Images are decoded, resized and cropped to uint8 (:class:`pipeline.data.images.BatchStream`): on the CPU in
this process between forward passes, on CUDA in DataLoader workers (or a thread, with none). Normalisation and the forward
pass run on the device (CUDA when present, else the CPU), in ``torch.inference_mode``, channels-last,
in float32 or with bfloat16 autocast (``backbone.precision``; ``auto``: bfloat16 where the device computes
it natively). Results are committed part by part (see
:mod:`pipeline.store.features`), so an interrupted extraction resumes where it stopped.

With a cut, one pass gives both caches: each image goes through the frozen bottom once, its activations at
the cut are stored (the cut cache) and the top above the cut turns them into the pooled features
(:class:`OnePass`); ``top(bottom(x))`` is the network, so the pooled features are those of a pass of the
whole network.
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

from pipeline.backbone.backbones import FeatureExtractor
from pipeline.core.device import compile_if_possible, torch_device
from pipeline.data.images import BatchStream, image_size, prefetch
from pipeline.data.preprocessing import recorded_decode
from pipeline.data.sources import Source, Splits
from pipeline.store.features import FeatureSpec, PartialFeatures


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


class OnePass(torch.nn.Module):
    """The network as the extraction runs it: uint8 images -> ``{"pooled": f(x)}``, or with a cut
    ``{"cut": bottom(x), "pooled": top(bottom(x))}`` (the bottom runs once for both caches)."""

    def __init__(self, backbone: FeatureExtractor, cut: str | None = None):
        super().__init__()
        self.backbone = backbone
        self.bottom, self.top = backbone.cut_at(cut) if cut else (None, None)

    @property
    def extractors(self) -> dict[str, FeatureExtractor]:
        """What describes each cache's features (for its :class:`FeatureSpec`)."""
        return {"pooled": self.backbone} | ({"cut": self.bottom} if self.bottom is not None else {})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.bottom is None:
            return {"pooled": self.backbone(images)}
        activations = self.bottom(images)
        return {"cut": activations, "pooled": self.top(activations).flatten(1)}


def feature_spec(splits: Splits, backbone: FeatureExtractor, weights: str | None, storage_dtype: str,
                 init_seed: int, precision: str, decode: str = "full") -> FeatureSpec:
    """What made the features: the one place a :class:`FeatureSpec` is assembled; ``decode`` (how JPEGs
    are decoded, ``data.decode``) is recorded in its preprocessing."""
    settings = splits.settings
    return FeatureSpec(
        backbone=backbone.name,
        weights="none" if weights is None else str(weights),
        weights_id=backbone.weights_id,
        input_size=backbone.preprocessing.geometry.crop_size,
        preprocessing=backbone.preprocessing.decoding(decode).to_json(),
        dataset_fingerprint=splits.fingerprint,
        split_seed=int(settings.get("seed", 0)),
        init_seed=init_seed,
        val_fraction=float(settings.get("val_fraction", 0.0)),
        subset_per_class=int(settings.get("subset_per_class") or -1),
        storage_dtype=storage_dtype,
        precision=precision,
        classes=tuple(splits.classes),
        feature_dim=backbone.feature_dim,
        cut=backbone.cut,
        feature_shape=backbone.feature_shape,
    )


LARGE_IMAGE = 2
"""On a CPU, images whose short side is at least this many times the resize decode in worker processes."""


def auto_workers(device: torch.device, source: Source, splits: Splits, geometry) -> int:
    """``backbone.num_workers: null``: on CUDA 8 (at most the cores); on a CPU, half the cores (at least one)
    decode in worker processes when the images are large (the first image's short side at least
    :data:`LARGE_IMAGE` times the resize: decoding then costs about as much as the forward pass), else 0,
    decoding between forward passes (for small images a concurrent decoder takes more from the forward
    pass than decoding costs). Measured on 2 cores in benchmarks/photo_speed.py and extract_speed.py."""
    cores = os.cpu_count() or 1
    if device.type == "cuda":
        return min(8, cores)
    first = next((s.keys[0] for s in splits.splits.values() if s.keys), None)
    size = first and image_size(next(iter(source.stream([first])))[1])
    return max(1, cores // 2) if size and min(size) >= LARGE_IMAGE * geometry.resize_size else 0


@contextlib.contextmanager
def forward_threads(device: torch.device, num_workers: int) -> Iterator[None]:
    """On a CPU with decoding workers, the forward pass takes the cores they leave (at least one thread):
    a forward pass spread over cores a decoder also uses waits on its slowest thread (measured on 2 cores:
    1 worker and 1 forward thread extract photos 1.5 to 2 times as fast as 1 or 2 workers beside 2 threads)."""
    threads = torch.get_num_threads()
    if device.type == "cpu" and num_workers:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - num_workers))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _plan(splits: Splits, partials: dict[str, PartialFeatures], shard: Shard, batch_size: int, part_batches: int
          ) -> tuple[dict[str, list[int]], int, int]:
    """The batches of each split this process still has to compute (its shard, less the parts committed
    intact in every cache), the number of images in them, and the number already committed."""
    plan, total, resumed = {}, 0, 0
    for name, split in splits.splits.items():
        n_batches = math.ceil(len(split) / batch_size)
        mine = shard.parts(math.ceil(n_batches / part_batches))
        done = set.intersection(*(partial.done(name, len(split)) for partial in partials.values()))
        my_batches = [b for b in range(n_batches) if b // part_batches in mine]
        plan[name] = [b for b in my_batches if b // part_batches not in done]
        rows = lambda batches: sum(min(batch_size, len(split) - b * batch_size) for b in batches)  # noqa: E731
        total += rows(plan[name])
        resumed += rows(my_batches) - rows(plan[name])
    return plan, total, resumed


def extract_features(
    splits: Splits,
    source: Source,
    model: OnePass,
    outputs: dict[str, tuple[FeatureSpec, str | Path]],
    *,
    batch_size: int = 64,
    num_workers: int | None = None,
    skip_bad: bool = False,
    device: torch.device | None = None,
    commit_rows: int = 1024,
    progress: bool = True,
    shard: Shard | None = None,
    compile: bool = False,
) -> dict[str, Path] | None:
    """Compute every image of ``splits`` once through ``model`` and cache each of its outputs (``outputs``:
    name -> (spec, file), for the names the model returns); resumes a partial run. Returns the files.

    With a :class:`Shard` (one process of a distributed run), this process extracts only its
    contiguous share of each split's parts; rank 0 assembles the files once every rank is done and
    returns them, the other ranks return None.
    """
    shard = shard or Shard()
    device = device or torch_device()
    geometry = model.backbone.preprocessing.geometry
    decode = recorded_decode(next(iter(outputs.values()))[0].preprocessing)
    if num_workers is None:
        num_workers = auto_workers(device, source, splits, geometry)
    part_batches = max(1, commit_rows // batch_size)
    precision = next(iter(outputs.values()))[0].precision
    compile = compile_if_possible(compile, device, "extract")
    arithmetic = f"{device.type}-{precision}" + ("-compiled" if compile else "")
    open_partials = lambda: {name: PartialFeatures(path, spec, part_batches * batch_size, arithmetic)  # noqa: E731
                             for name, (spec, path) in outputs.items()}
    if shard.rank == 0:  # rank 0 alone decides whether an earlier partial run can be resumed
        partials = open_partials()
    shard.barrier()
    if shard.rank != 0:
        partials = open_partials()
    name = model.backbone.name + (f" (and its input at {model.bottom.cut})" if model.bottom is not None else "")
    model = model.to(device).to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model)
    plan, total, resumed = _plan(splits, partials, shard, batch_size, part_batches)
    who = f" [rank {shard.rank}/{shard.world_size}]" if shard.world_size > 1 else ""
    if resumed:
        print(f"resuming{who}: {resumed} images already extracted in {', '.join(str(p.dir) for p in partials.values())}",
              flush=True)

    def compute(plan: dict[str, list[int]], total: int) -> None:
        bar = tqdm(total=total, unit="img", desc=f"extract {name}{who}",
                   disable=not progress or shard.rank != 0, smoothing=0.1)
        for split, batches in plan.items():
            if batches:
                stream = BatchStream(source, splits.splits[split].keys, batch_size, batches, geometry, skip_bad, decode)
                images, seconds = _extract_split(split, stream, model, partials, device, num_workers, part_batches,
                                                 len(splits.splits[split]), compile, precision, bar)
                if shard.rank == 0:
                    bar.write(f"{split}: {images} images at {images / seconds:.1f} images/s"
                              + (" (rank 0)" if shard.world_size > 1 else ""))
        bar.close()

    with forward_threads(device, num_workers):
        compute(plan, total)
    shard.barrier()  # every rank's parts are committed
    if shard.rank != 0:
        return None
    # parts lost since the plan (deleted, damaged) are computed again here rather than failing the assembly
    plan, total, _ = _plan(splits, partials, Shard(), batch_size, part_batches)
    if total:
        print(f"computing again {total} images whose parts went missing", flush=True)
        with forward_threads(device, num_workers):
            compute(plan, total)
    rows = {n: (s.keys, s.labels) for n, s in splits.splits.items()}
    return {name: partials[name].assemble(spec, rows) for name, (spec, _) in outputs.items()}


def _extract_split(name: str, stream: BatchStream, model, partials: dict[str, PartialFeatures], device: torch.device,
                   num_workers: int, part_batches: int, n_images: int, compile: bool, precision: str, bar
                   ) -> tuple[int, float]:
    """Run the model over the planned batches of one split, committing each part (of every cache) once
    all its batches are done. Returns the images computed and the seconds taken."""
    batch_size = stream.batch_size
    loader = torch.utils.data.DataLoader(
        _TorchBatches(stream), batch_size=None, num_workers=num_workers,
        pin_memory=device.type == "cuda", persistent_workers=False,
    )
    pending: dict[int, dict[int, tuple[dict[str, np.ndarray], np.ndarray]]] = {}
    n_batches = math.ceil(n_images / batch_size)
    expected = iter(stream.batches)
    start, done = time.perf_counter(), 0
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
        # on the CPU decoding runs between forward passes (the forward pass holds every core); on a GPU
        # without worker processes a thread decodes the next batch while the device runs this one
        for b, images, valid in (loader if num_workers or device.type == "cpu" else prefetch(loader)):
            if b != next(expected):
                raise RuntimeError(f"batches out of order in {name}: got {b}")
            n = len(images)
            if compile and n < batch_size:  # one shape only: a smaller last batch would recompile
                images = torch.cat([images, images.new_zeros((batch_size - n, *images.shape[1:]))])
            out = model(images.to(device, non_blocking=True))
            feats = {cache: out[cache][:n].float().cpu().numpy().astype(p.spec.storage_dtype, copy=False)
                     for cache, p in partials.items()}
            part = b // part_batches
            pending.setdefault(part, {})[b] = (feats, valid.numpy())
            if len(pending[part]) == min(part_batches, n_batches - part * part_batches):
                group = pending.pop(part)
                rows = [group[k] for k in sorted(group)]
                valid_rows = np.concatenate([r[1] for r in rows])
                for cache, partial in partials.items():
                    partial.write_part(name, part, np.concatenate([r[0][cache] for r in rows]), valid_rows)
            bar.update(n)
            done += n
    return done, time.perf_counter() - start
