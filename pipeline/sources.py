"""Where images come from and how they are split: the data side's listing of a dataset.

A *source* lists the images of a dataset as ``(key, split, class)`` and streams their raw
contents in its natural order. Three kinds:

- an image-folder directory ``<root>/<split>/<class>/<image>``, images at any depth below the class
  folder (as torchvision's ``ImageFolder``); dot-files, dot-folders and ``__MACOSX`` are ignored;
- the same tree inside a ``.tar`` / ``.tar.gz`` / ``.tgz`` archive, streamed without unpacking;
- the official CIFAR-10 python batches (``cifar-10-batches-py``, as torchvision downloads it).

:func:`make_splits` turns a source into the train / val / test :class:`Splits` (written by the
prepare stage as JSON). Decoding the streamed contents is :mod:`pipeline.images`'s job.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Sequence

import numpy as np

from pipeline.errors import BadImageError, DatasetError
from pipeline.fileutil import sha256_file, sha256_json, write_json
from pipeline.splitting import validation_rows

SOURCE_SPLITS = ("train", "test")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")


@functools.cache
def image_extensions() -> frozenset[str]:
    """File suffixes PIL can read (lower case, with the dot)."""
    from PIL import Image

    return frozenset(ext.lower() for ext in Image.registered_extensions())


def is_ignored(name: str) -> bool:
    """A file or folder name that is no part of a dataset: dot-files, dot-folders, ``__MACOSX``."""
    return name.startswith(".") or name == "__MACOSX"


def _parse_member(name: str, extensions: frozenset[str]) -> tuple[str, str] | None:
    """``train/cat/1.jpg`` or ``train/cat/more/1.jpg`` -> (``train``, ``cat``); None for what is not
    an image in a class folder."""
    parts = PurePosixPath(name).parts
    if len(parts) < 3 or any(is_ignored(p) for p in parts):
        return None
    if PurePosixPath(name).suffix.lower() not in extensions:
        return None
    return parts[0], parts[1]


def _two_levels(paths: Iterable[str]) -> list[str]:
    """The files and folders of the first two levels of relative ``paths``, sorted, ignored names left
    out; folders end with ``/``, in ``paths`` and in the result."""
    out = set()
    for path in paths:
        parts = PurePosixPath(path).parts
        for depth in range(1, min(len(parts), 2) + 1):
            if is_ignored(parts[depth - 1]):
                break
            out.add("/".join(parts[:depth]) + "/" * (depth < len(parts) or path.endswith("/")))
    return sorted(out)


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
        """Class folders (``train/cat``) with no image at any depth below them."""
        used = {f"{split}/{cls}" for _, split, cls in self.entries()}
        return sorted(set(self._class_dirs()) - used)

    def _class_dirs(self) -> list[str]:
        """Every ``<split>/<class>`` folder of the source splits, images in it or not."""
        return []

    def top_levels(self) -> list[str]:
        """The files and folders (ending with ``/``) of the first two levels, for messages."""
        return []


class FolderSource(Source):
    def __init__(self, root: Path):
        self.root = root
        self.location = str(root)

    def entries(self) -> list[tuple[str, str, str]]:
        extensions = image_extensions()
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not is_ignored(d))
            rel = Path(dirpath).relative_to(self.root)
            for name in sorted(filenames):
                key = (rel / name).as_posix()
                parsed = _parse_member(key, extensions)
                if parsed:
                    out.append((key, *parsed))
        return out

    def _class_dirs(self) -> list[str]:
        return [
            f"{split}/{d.name}"
            for split in SOURCE_SPLITS
            if (self.root / split).is_dir()
            for d in (self.root / split).iterdir()
            if d.is_dir() and not is_ignored(d.name)
        ]

    def top_levels(self) -> list[str]:
        paths = []
        for top in self.root.iterdir():
            paths.append(top.name + "/" * top.is_dir())
            if top.is_dir():
                paths += [f"{top.name}/{p.name}" + "/" * p.is_dir() for p in top.iterdir()]
        return _two_levels(paths)

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
        """(member name, is a file) for every member, and the top-level prefix: the one folder at the
        top, if it is not a split (files beside it, dot-files and ``__MACOSX`` do not count); one pass, kept."""
        names = [(name, m.isfile()) for _, m, name in self._members() if PurePosixPath(name).parts]
        tops = {
            parts[0] for n, is_file in names
            if (len(parts := PurePosixPath(n).parts) > 1 or not is_file) and not is_ignored(parts[0])
        }
        prefix = ""
        if len(tops) == 1 and not tops & set(SOURCE_SPLITS):
            prefix = tops.pop() + "/"
        return names, prefix

    def _keys(self) -> Iterator[tuple[str, bool]]:
        """(name below the top-level prefix, is a file) for every member under it."""
        names, prefix = self._listing
        return ((n.removeprefix(prefix), is_file) for n, is_file in names if n.startswith(prefix))

    def entries(self) -> list[tuple[str, str, str]]:
        extensions = image_extensions()
        self._prefix = self._listing[1]
        out = []
        for key, is_file in self._keys():
            parsed = _parse_member(key, extensions) if is_file else None
            if parsed:
                out.append((key, *parsed))
        return out

    def _class_dirs(self) -> list[str]:
        dirs = set()
        for key, is_file in self._keys():
            parts = PurePosixPath(key).parts
            if len(parts) > 1 + is_file and parts[0] in SOURCE_SPLITS and not is_ignored(parts[1]):
                dirs.add(f"{parts[0]}/{parts[1]}")
        return sorted(dirs)

    def top_levels(self) -> list[str]:
        prefix = self._listing[1]
        return [prefix + p for p in _two_levels(key + "/" * (not is_file) for key, is_file in self._keys())]

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
                if not name.endswith(expected) or (head and not head.endswith("/")) or is_ignored(head.split("/")[0]):
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
    found: dict = field(default_factory=dict)
    """Images the source holds per source split: ``{"train": {"images": n, "in_sub_folders": m}, ...}``,
    ``m`` of them below a sub-folder of their class folder."""

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
                "found": self.found,
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
            found=raw.get("found", {}),
        )
        if splits.fingerprint != raw["fingerprint"]:
            raise DatasetError(f"splits file {path} does not match its recorded fingerprint (edited by hand?)")
        return splits


def _holding(source: Source, limit: int = 20) -> str:
    """``; its top levels hold: a/, a/b.jpg, ...`` for a layout message ("" when there is nothing to say)."""
    names = source.top_levels()
    if not names:
        return ""
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return f"; its top levels hold: {', '.join(names[:limit])}{more}"


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
                f"for each of {list(SOURCE_SPLITS)}{_holding(source)}"
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
    val_mask = validation_rows(labels, len(classes), val_fraction, rng)
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
        found={
            s: {"images": len(items), "in_sub_folders": sum(k.count("/") > 2 for k, _ in items)}
            for s, items in by_split.items()
        },
    )
