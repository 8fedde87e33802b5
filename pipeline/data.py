"""Image datasets: where images come from, how they are split, and how they are decoded.

A *source* lists the images of a dataset as ``(key, split, class)`` and streams their raw
contents in its natural order. Three kinds:

- an image-folder directory ``<root>/<split>/<class>/<image>``;
- the same tree inside a ``.tar`` / ``.tar.gz`` / ``.tgz`` archive, streamed without unpacking;
- the official CIFAR-10 python batches (``cifar-10-batches-py``, as torchvision downloads it).

:func:`make_splits` turns a source into the train / val / test :class:`Splits` (written by the
prepare stage as JSON); :class:`BatchStream` yields decoded, resized, cropped uint8 batches for
the backbone.
"""

from __future__ import annotations

import functools
import io
import json
import os
import pickle
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator, Sequence

import numpy as np

from pipeline.errors import BadImageError, DatasetError
from pipeline.fileutil import sha256_file, sha256_json, write_json

SOURCE_SPLITS = ("train", "test")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def _image_extensions() -> frozenset[str]:
    from PIL import Image

    return frozenset(ext.lower() for ext in Image.registered_extensions())


def _parse_member(name: str, extensions: frozenset[str]) -> tuple[str, str] | None:
    """``train/cat/1.jpg`` -> (``train``, ``cat``); None for what is not an image of a split."""
    parts = PurePosixPath(name).parts
    if len(parts) != 3 or any(p.startswith(".") for p in parts):
        return None
    if PurePosixPath(name).suffix.lower() not in extensions:
        return None
    return parts[0], parts[1]


# -- sources ---------------------------------------------------------------------------------
class Source:
    """Base class of image sources: list the images, stream their contents, fingerprint them."""

    location: str

    def entries(self) -> list[tuple[str, str, str]]:
        """``(key, split, class_name)`` for every image, in the source's streaming order."""
        raise NotImplementedError

    def stream(self, keys: Sequence[str]) -> Iterator[tuple[str, object]]:
        """Yield ``(key, bytes or PIL image)`` for ``keys``, which must be in ``entries()`` order."""
        raise NotImplementedError

    def content_hash(self) -> str:
        raise NotImplementedError

    def empty_class_dirs(self) -> list[str]:
        return []


class FolderSource(Source):
    def __init__(self, root: Path):
        self.root = root
        self.location = str(root)

    def entries(self) -> list[tuple[str, str, str]]:
        extensions = _image_extensions()
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            rel = Path(dirpath).relative_to(self.root)
            for name in sorted(filenames):
                key = (rel / name).as_posix()
                parsed = _parse_member(key, extensions)
                if parsed:
                    out.append((key, *parsed))
        return out

    def empty_class_dirs(self) -> list[str]:
        return [
            f"{split}/{d.name}"
            for split in SOURCE_SPLITS
            if (self.root / split).is_dir()
            for d in sorted((self.root / split).iterdir())
            if d.is_dir() and not d.name.startswith(".") and not any(d.iterdir())
        ]

    def stream(self, keys: Sequence[str]) -> Iterator[tuple[str, object]]:
        for key in keys:
            try:
                yield key, (self.root / key).read_bytes()
            except OSError as err:  # decode_image raises it, where on_bad_image decides
                yield key, err

    def content_hash(self) -> str:
        def file_hash(key: str) -> str:
            try:
                return sha256_file(self.root / key)
            except OSError as err:  # extraction reports it, or skips it (backbone.on_bad_image)
                return f"unreadable: {err.strerror}"

        return sha256_json([(key, file_hash(key)) for key, _, _ in self.entries()])


class TarSource(Source):
    """An image-folder tree inside a tar archive (optionally under one top-level directory)."""

    def __init__(self, path: Path):
        self.path = path
        self.location = str(path)
        self._prefix: str | None = None

    def _members(self) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo, str]]:
        try:
            with tarfile.open(self.path, mode="r|*") as tar:
                for member in tar:
                    yield tar, member, member.name.removeprefix("./")
        except (tarfile.TarError, EOFError, OSError) as err:
            raise DatasetError(f"cannot read archive {self.path}: {err}") from None

    @functools.cached_property
    def _listing(self) -> tuple[list[tuple[str, bool]], str]:
        """(member name, is a file) for every member, and the top-level prefix; one pass, kept."""
        names = [(name, m.isfile()) for _, m, name in self._members() if PurePosixPath(name).parts]
        tops = {PurePosixPath(n).parts[0] for n, _ in names}
        prefix = ""
        if len(tops) == 1 and not tops & set(SOURCE_SPLITS):
            prefix = tops.pop() + "/"
        return names, prefix

    def entries(self) -> list[tuple[str, str, str]]:
        extensions = _image_extensions()
        names, self._prefix = self._listing
        out = []
        for name, is_file in names:
            key = name.removeprefix(self._prefix)
            parsed = _parse_member(key, extensions) if is_file else None
            if parsed:
                out.append((key, *parsed))
        return out

    def empty_class_dirs(self) -> list[str]:
        names, prefix = self._listing
        dirs = {n.removeprefix(prefix).rstrip("/") for n, is_file in names if not is_file}
        class_dirs = {d for d in dirs if len(PurePosixPath(d).parts) == 2 and d.split("/")[0] in SOURCE_SPLITS}
        used = {"/".join(PurePosixPath(n.removeprefix(prefix)).parts[:2]) for n, f in names if f}
        return sorted(class_dirs - used)

    def stream(self, keys: Sequence[str]) -> Iterator[tuple[str, object]]:
        """One pass over the archive; the top-level prefix is learnt from the first match."""
        wanted = set(keys)
        order = iter(keys)
        expected = next(order, None)
        prefix = self._prefix
        for tar, member, name in self._members():
            if expected is None:
                return
            if prefix is None:
                head = name[: len(name) - len(expected)]
                if not name.endswith(expected) or (head and not head.endswith("/")):
                    continue
                prefix = head
            key = name.removeprefix(prefix)
            if key not in wanted:
                continue
            if key != expected:
                raise DatasetError(f"{self.location}: keys not in archive order at {key!r}")
            f = tar.extractfile(member)
            yield key, (f.read() if f is not None else OSError("not a regular file"))
            expected = next(order, None)
        if expected is not None:
            raise BadImageError.of(expected, self.location, "missing from the archive")

    def content_hash(self) -> str:
        return sha256_file(self.path)


class Cifar10BatchesSource(Source):
    """The official CIFAR-10 python batches, as ``torchvision.datasets.CIFAR10`` stores them."""

    FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}

    def __init__(self, root: Path):
        self.root = root
        self.location = str(root)

    @staticmethod
    def matches(path: Path) -> bool:
        return (path / "batches.meta").is_file() and (path / "test_batch").is_file()

    def _classes(self) -> list[str]:
        with open(self.root / "batches.meta", "rb") as f:
            return pickle.load(f, encoding="latin1")["label_names"]

    def _batches(self, split: str) -> Iterator[tuple[np.ndarray, list[int]]]:
        for name in self.FILES[split]:
            with open(self.root / name, "rb") as f:
                batch = pickle.load(f, encoding="latin1")
            yield batch["data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), batch["labels"]

    def entries(self) -> list[tuple[str, str, str]]:
        classes = self._classes()
        out = []
        for split in SOURCE_SPLITS:
            i = 0
            for _, labels in self._batches(split):
                for label in labels:
                    out.append((f"{split}/{i:05d}", split, classes[label]))
                    i += 1
        return out

    def stream(self, keys: Sequence[str]) -> Iterator[tuple[str, object]]:
        from PIL import Image

        wanted = set(keys)
        for split in SOURCE_SPLITS:
            if not any(k.startswith(split + "/") for k in wanted):
                continue
            i = 0
            for images, _ in self._batches(split):
                for image in images:
                    key = f"{split}/{i:05d}"
                    if key in wanted:
                        yield key, Image.fromarray(image)
                    i += 1

    def content_hash(self) -> str:
        names = ["batches.meta", *self.FILES["train"], *self.FILES["test"]]
        return sha256_json([(n, sha256_file(self.root / n)) for n in names])


def open_source(location: str | Path) -> Source:
    path = Path(location)
    if not path.exists():
        raise DatasetError(
            f"data.source {str(location)!r} does not exist; give an image-folder directory, a "
            f"{'/'.join(ARCHIVE_SUFFIXES)} archive of one, or a CIFAR-10 'cifar-10-batches-py' "
            "directory (python -m pipeline download-cifar10 fetches it when online)"
        )
    if path.is_dir():
        return Cifar10BatchesSource(path) if Cifar10BatchesSource.matches(path) else FolderSource(path)
    if path.name.endswith(ARCHIVE_SUFFIXES):
        return TarSource(path)
    raise DatasetError(f"data.source {str(location)!r} is a file but not a {'/'.join(ARCHIVE_SUFFIXES)} archive")


def download_cifar10(root: str | Path) -> Path:
    """Download the official CIFAR-10 with torchvision (needs the internet); returns its directory."""
    from torchvision.datasets import CIFAR10

    try:
        for train in (True, False):
            CIFAR10(root=str(root), train=train, download=True)
    except OSError as err:  # URLError included
        raise DatasetError(
            f"could not download CIFAR-10 ({err}); offline, use the shipped data/cifar10-jpeg.tar.gz "
            "(the default data.source)"
        ) from None
    return Path(root) / "cifar-10-batches-py"


# -- splits ----------------------------------------------------------------------------------
@dataclass
class Split:
    keys: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class Splits:
    """The prepared dataset: class names, the three splits, and where the images come from."""

    source: str
    source_hash: str
    classes: list[str]
    splits: dict[str, Split]
    settings: dict = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """Identifies the exact images, labels and split membership."""
        return sha256_json(
            {
                "source_hash": self.source_hash,
                "classes": self.classes,
                "splits": {n: [s.keys, s.labels] for n, s in self.splits.items()},
            }
        )

    def save(self, path: str | Path) -> None:
        write_json(
            path,
            {
                "source": self.source,
                "source_hash": self.source_hash,
                "fingerprint": self.fingerprint,
                "classes": self.classes,
                "settings": self.settings,
                "counts": {n: len(s) for n, s in self.splits.items()},
                "splits": {n: {"keys": s.keys, "labels": s.labels} for n, s in self.splits.items()},
            },
        )

    @classmethod
    def load(cls, path: str | Path) -> Splits:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"splits file {path} does not exist; run the prepare stage first")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise DatasetError(f"splits file {path} is not valid JSON ({err}); run the prepare stage again") from None
        splits = cls(
            source=raw["source"],
            source_hash=raw["source_hash"],
            classes=raw["classes"],
            splits={n: Split(s["keys"], s["labels"]) for n, s in raw["splits"].items()},
            settings=raw.get("settings", {}),
        )
        if splits.fingerprint != raw["fingerprint"]:
            raise DatasetError(f"splits file {path} does not match its recorded fingerprint (edited by hand?)")
        return splits


def _stratified_take(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a seeded random subset with at most ``per_class`` items of each class."""
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(chosen))


def make_splits(source: Source, val_fraction: float, subset_per_class: int | None, seed: int) -> Splits:
    """List a source, check its layout, subset it and carve a stratified validation split."""
    entries = source.entries()
    by_split: dict[str, list[tuple[str, str]]] = {s: [] for s in SOURCE_SPLITS}
    for key, split, cls in entries:
        if split in by_split:
            by_split[split].append((key, cls))
    for split, items in by_split.items():
        if not items:
            raise DatasetError(
                f"{source.location}: split {split!r} has no images; expected <root>/{split}/<class>/<image> "
                f"for each of {list(SOURCE_SPLITS)}"
            )
    empty = source.empty_class_dirs()
    if empty:
        raise DatasetError(f"{source.location}: class folders with no images: {empty}")
    classes = sorted({cls for items in by_split.values() for _, cls in items})
    if len(classes) < 2:
        raise DatasetError(f"{source.location}: found one class ({classes}); a classifier needs at least two")
    train_classes = {cls for _, cls in by_split["train"]}
    if missing := sorted(set(classes) - train_classes):
        raise DatasetError(f"{source.location}: classes with test images but no training images: {missing}")

    index = {c: i for i, c in enumerate(classes)}
    rng = np.random.default_rng(seed)
    arrays = {
        s: (np.array([k for k, _ in items]), np.array([index[c] for _, c in items], dtype=np.int64))
        for s, items in by_split.items()
    }
    if subset_per_class is not None:
        for s, (keys, labels) in arrays.items():
            take = _stratified_take(labels, subset_per_class, rng)
            arrays[s] = keys[take], labels[take]

    keys, labels = arrays["train"]
    counts = Counter(labels.tolist())
    val_mask = np.zeros(len(keys), bool)
    if val_fraction > 0:
        for c in range(len(classes)):
            idx = rng.permutation(np.flatnonzero(labels == c))
            n_val = min(max(1, round(val_fraction * counts[c])), counts[c] - 1) if counts[c] > 1 else 0
            val_mask[idx[:n_val]] = True
    parts = {
        "train": (keys[~val_mask], labels[~val_mask]),
        "val": (keys[val_mask], labels[val_mask]),
        "test": arrays["test"],
    }
    return Splits(
        source=source.location,
        source_hash=source.content_hash(),
        classes=classes,
        splits={s: Split(k.tolist(), lab.tolist()) for s, (k, lab) in parts.items()},
        settings={"val_fraction": val_fraction, "subset_per_class": subset_per_class, "seed": seed},
    )


# -- decoding --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageGeometry:
    """How an image becomes a fixed-size uint8 tensor: resize the short side, then centre-crop."""

    resize_size: int
    crop_size: int
    interpolation: str = "bilinear"


def decode_image(raw: object, geometry: ImageGeometry):
    """Bytes (any format PIL reads) or a PIL image -> uint8 tensor (3, crop, crop), RGB."""
    return resize_crop([read_rgb(raw)], geometry)[0]


def read_rgb(raw: object):
    """Bytes (any format PIL reads) or a PIL image -> uint8 tensor (3, H, W), RGB, stored (H, W, 3)."""
    import torch
    from PIL import Image

    if isinstance(raw, Exception):  # the source could not read the file
        raise raw
    image = raw if isinstance(raw, Image.Image) else Image.open(io.BytesIO(raw))
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)


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
                 geometry: ImageGeometry, skip_bad: bool = False):
        self.source, self.keys, self.batch_size = source, list(keys), batch_size
        self.batches, self.geometry, self.skip_bad = list(batches), geometry, skip_bad

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
                    decoded.append(read_rgb(raw))
                except Exception as err:  # PIL raises many types for corrupt data
                    if not self.skip_bad:
                        raise BadImageError.of(key, self.source.location, f"{type(err).__name__}: {err}") from None
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

