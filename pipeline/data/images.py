"""Images to tensors: decoding, resizing and centre-cropping to uint8, and batching for the backbone.

:func:`read_rgb` decodes any format PIL reads (:func:`read_images` and :func:`thumbnails`: images by id, in one
pass over a dataset); :func:`resize_crop` applies a backbone's
:class:`~pipeline.data.preprocessing.ImageGeometry`; :class:`BatchStream` yields the decoded batches of
one split of a :class:`~pipeline.data.sources.Source` for extraction.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from pipeline.core.errors import BadImageError, DatasetError, PipelineError
from pipeline.data.preprocessing import ImageGeometry
from pipeline.data.sources import Source, check_readable_kinds, image_extensions, is_ignored, open_source


def image_paths(paths: list[str | Path]) -> list[Path]:
    """Files as given; folders searched recursively for images (sorted), dot-files, dot-folders and
    ``__MACOSX`` left out; a HEIC / AVIF file Pillow cannot read here stops it, saying what to install."""
    extensions = image_extensions()
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            check_readable_kinds(str(p), (str(f) for f in p.rglob("*")))
            out += sorted(
                f for f in p.rglob("*")
                if f.is_file() and f.suffix.lower() in extensions and not any(map(is_ignored, f.relative_to(p).parts))
            )
        elif p.is_file():
            out.append(p)
        else:
            raise PipelineError(f"{p} is neither an image file nor a folder")
    return out


def decode_image(raw: object, geometry: ImageGeometry, decode: str = "full"):
    """Bytes (any format PIL reads) or a PIL image -> uint8 tensor (3, crop, crop), RGB."""
    return resize_crop([read_rgb(raw, reduced_to(geometry, decode))], geometry)[0]


def reduced_to(geometry: ImageGeometry, decode: str) -> int | None:
    """The short side a ``reduced`` decode must still cover (the resize's), None for a full decode."""
    return geometry.resize_size if decode == "reduced" else None


def read_rgb(raw: object, cover: int | None = None):
    """Bytes (any format PIL reads) or a PIL image -> uint8 tensor (3, H, W), RGB, stored (H, W, 3): the
    image of :func:`open_rgb` (``cover`` as there)."""
    import torch

    return torch.from_numpy(np.array(open_rgb(raw, cover))).permute(2, 0, 1)


def open_rgb(raw: object, cover: int | None = None):
    """Bytes (any format PIL reads) or a PIL image -> an RGB PIL image, turned upright by its EXIF
    orientation, 16-bit values scaled to 8 bits (no torch: the pictures of the mistakes use it too). With
    ``cover``, a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) whose short side is still at
    least ``cover`` pixels (libjpeg's scaled decoding: the entropy decoding stays, the inverse DCT and
    colour conversion shrink); other formats, and JPEGs not twice that size, are decoded at full size."""
    from PIL import Image, ImageOps

    if isinstance(raw, Exception):  # the source could not read the file
        raise raw
    image_extensions()  # registers the optional plugins (HEIC) in this process too; cached
    try:
        image = raw if isinstance(raw, Image.Image) else Image.open(io.BytesIO(raw))
    except Image.DecompressionBombError as err:
        raise BadImageError(f"too large to decode safely ({err}); Pillow's limit is PIL.Image.MAX_IMAGE_PIXELS") from None
    if cover is not None:
        draft(image, cover)
    return _to_8_bits(ImageOps.exif_transpose(image)).convert("RGB")


def draft(image, cover: int) -> None:
    """Set a JPEG not yet loaded to decode at the smallest DCT scale (1/2, 1/4, 1/8) whose short side is
    still at least ``cover`` pixels (Pillow's ``draft``); other images, and JPEGs under twice that, as they are."""
    w, h = image.size
    if image.format == "JPEG" and min(w, h) >= 2 * cover:
        image.draft(None, (1, cover) if h <= w else (cover, 1))  # the scale is set by the short side alone


def _opened(location: str, keys: Iterable[str], cover: int | None, ordered: bool) -> Iterator[tuple[str, object]]:
    """(id, RGB PIL image of :func:`open_rgb`) of the images ``keys`` of the dataset at ``location``, in the
    dataset's order: one pass over an archive. ``ordered``: ``keys`` are in that order already (as splits.json
    lists a split's), so the dataset is not listed first (2 s for CIFAR-10's archive)."""
    source = open_source(location)
    wanted = set(keys)
    order = list(keys) if ordered else [key for key, _, _ in source.entries() if key in wanted]
    if missing := wanted - set(order):
        raise DatasetError(f"{location} no longer holds {len(missing)} of the images asked for "
                           f"({sorted(missing)[:5]}): run the prepare and extract stages again (dvc repro)")
    for key, raw in source.stream(order):  # an ordered key it no longer holds comes as the error that says so
        try:
            yield key, open_rgb(raw, cover)
        except Exception as err:  # PIL raises many types for corrupt data
            raise BadImageError.of(key, location, f"{type(err).__name__}: {err}") from None


def read_images(location: str, keys: Iterable[str], cover: int | None = None,
                ordered: bool = False) -> Iterator[tuple[str, np.ndarray]]:
    """(id, RGB (H, W, 3) uint8) of the images ``keys`` of the dataset at ``location``, in the dataset's order
    (one pass); with ``cover``, a large JPEG decoded at the smallest scale still covering it (:func:`open_rgb`);
    ``ordered``: ``keys`` are in the dataset's order already."""
    for key, image in _opened(location, keys, cover, ordered):
        yield key, np.asarray(image)


def thumbnails(location: str, keys: Iterable[str], size: int, ordered: bool = False) -> dict[str, np.ndarray]:
    """id -> the image as RGB (H, W, 3) uint8, its largest side at most ``size`` pixels (a large JPEG decoded at
    the smallest scale that still covers the thumbnail), for pictures; ``ordered`` as for :func:`read_images`."""
    out = {}
    for key, image in _opened(location, keys, size, ordered):
        image.thumbnail((size, size))
        out[key] = np.asarray(image)
    return out


def image_size(raw: object) -> tuple[int, int] | None:
    """(width, height) from an image's header (nothing decoded); None when it cannot be read."""
    from PIL import Image

    if isinstance(raw, Image.Image):
        return raw.size
    try:
        with Image.open(io.BytesIO(raw)) as image:
            return image.size
    except Exception:  # unreadable: extraction reports it, or skips it
        return None


def _to_8_bits(image):
    """16-bit grayscale (mode ``I;16*``, or ``I`` with values above 255) -> mode ``L``, 0..65535 mapped
    to 0..255; other images as they are (PIL's own conversion would clip at 255)."""
    from PIL import Image

    if not image.mode.startswith("I"):
        return image
    values = np.asarray(image).astype(np.int64)
    if image.mode != "I" or values.max(initial=0) > 255:
        values = np.round(values / 257)
    return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8))


def resize_crop(images: Sequence, geometry: ImageGeometry):
    """uint8 images (3, H, W) of any sizes -> (B, 3, crop, crop) channels-last: torchvision's
    ``resize(resize_size)`` (short side) then ``center_crop(crop_size)``.

    Bilinear and bicubic run as torch's anti-aliased uint8 resize, which computes PIL's filter (what
    torchvision applies to PIL images): same pixels for CIFAR at the default geometry, within 2
    levels otherwise (tested). Images of one size are resized together, on all the CPU's threads: for
    CIFAR a batch is one call, 4x faster here than PIL image by image. Nearest, and crops that need
    padding, go through torchvision's PIL path.
    """
    import torch
    import torch.nn.functional as F

    crop = geometry.crop_size
    out = torch.empty((len(images), 3, crop, crop), dtype=torch.uint8, memory_format=torch.channels_last)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        by_size.setdefault(tuple(image.shape[1:]), []).append(i)
    for (h, w), members in by_size.items():
        plan = _resize_plan(h, w, geometry.resize_size, crop)
        if plan is None or geometry.interpolation not in ("bilinear", "bicubic"):
            for i in members:
                out[i] = _torchvision_resize_crop(images[i], geometry)
            continue
        new_h, new_w, top, left = plan
        # stacked as (B, H, W, 3), the layout PIL decodes to: a channels-last batch in one copy
        group = torch.stack([images[i].permute(1, 2, 0) for i in members]).permute(0, 3, 1, 2)
        resized = F.interpolate(group, size=(new_h, new_w), mode=geometry.interpolation, antialias=True, align_corners=False)
        out[members] = resized[:, :, top : top + crop, left : left + crop]
    return out


def _resize_plan(h: int, w: int, resize: int, crop: int) -> tuple[int, int, int, int] | None:
    """(new_h, new_w, top, left) of torchvision's ``resize(resize)`` then ``center_crop(crop)`` on an
    (h, w) image; None when the crop would need padding."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if crop > new_w or crop > new_h:
        return None
    return new_h, new_w, round((new_h - crop) / 2.0), round((new_w - crop) / 2.0)


def _torchvision_resize_crop(image, geometry: ImageGeometry):
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    pil = TF.to_pil_image(image)
    pil = TF.resize(pil, geometry.resize_size, interpolation=InterpolationMode(geometry.interpolation))
    return TF.pil_to_tensor(TF.center_crop(pil, geometry.crop_size))


def prefetch(iterable, depth: int = 2):
    """Iterate ``iterable`` in a background thread, ``depth`` items ahead (exceptions re-raised here)."""
    import queue
    import threading

    items: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in iterable:
                if stop.is_set():
                    return
                items.put(item)
            items.put(done)
        except BaseException as err:  # handed to the consumer
            items.put(err)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while (item := items.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                items.get_nowait()
            except queue.Empty:
                thread.join(0.01)


class BatchStream:
    """Iterable of ``(batch_index, uint8 images (B, 3, H, W), valid mask (B,))`` for one split.

    Batch ``b`` holds images ``[b * batch_size, (b + 1) * batch_size)`` of ``keys``; only the
    batches in ``batches`` are produced, in that order. As a torch ``IterableDataset`` with
    ``W`` workers, worker ``w`` produces every ``W``-th batch, so the DataLoader's round-robin
    returns them in order. With ``skip_bad`` an unreadable image gives a zero image and a False
    in the mask instead of an error.
    """

    def __init__(self, source: Source, keys: Sequence[str], batch_size: int, batches: Sequence[int],
                 geometry: ImageGeometry, skip_bad: bool = False, decode: str = "full"):
        self.source, self.keys, self.batch_size = source, list(keys), batch_size
        self.batches, self.geometry, self.skip_bad = list(batches), geometry, skip_bad
        self.cover = reduced_to(geometry, decode)

    def __iter__(self):
        import torch

        info = torch.utils.data.get_worker_info()
        mine = self.batches if info is None else self.batches[info.id :: info.num_workers]
        if not mine:
            return
        size = self.geometry.crop_size
        # reading runs a batch ahead in a thread (it waits on the disk, not the CPU); decoding runs here,
        # between forward passes: on a CPU whose cores the forward pass uses, a concurrent decoder takes
        # more from it than decoding costs (measured in benchmarks/extract_speed.py)
        for b, keys, raws in prefetch(self._raw_batches(mine)):
            decoded, valid = [], torch.ones(len(keys), dtype=torch.bool)
            for i, (key, raw) in enumerate(zip(keys, raws)):
                try:
                    decoded.append(read_rgb(raw, self.cover))
                except Exception as err:  # PIL raises many types for corrupt data
                    if not self.skip_bad:
                        reason = str(err) if isinstance(err, BadImageError) else f"{type(err).__name__}: {err}"
                        raise BadImageError.of(key, self.source.location, f"{reason}; to leave unreadable images out "
                                               "(listed in the feature file), set backbone.on_bad_image: skip") from None
                    decoded.append(torch.zeros((3, size, size), dtype=torch.uint8))
                    valid[i] = False
            images = resize_crop(decoded, self.geometry)
            images[~valid] = 0
            yield b, images, valid

    def _raw_batches(self, batches: Sequence[int]) -> Iterator[tuple[int, list[str], list[object]]]:
        """``(b, keys, raw contents)`` of each batch, in one pass over the source."""
        wanted = [k for b in batches for k in self.keys[b * self.batch_size : (b + 1) * self.batch_size]]
        stream = self.source.stream(wanted)
        for b in batches:
            keys = self.keys[b * self.batch_size : (b + 1) * self.batch_size]
            raws = []
            for expected in keys:
                key, raw = next(stream)
                assert key == expected, (key, expected)
                raws.append(raw)
            yield b, keys, raws

