"""Where images come from and how they are split: the data side's listing of a dataset.

A *source* lists the files of a dataset and streams their raw contents in its natural order. Three kinds:

- a directory; dot-files, dot-folders and ``__MACOSX`` are ignored;
- the same tree inside a ``.tar`` / ``.tar.gz`` / ``.tgz`` archive, streamed without unpacking;
- the official CIFAR-10 python batches (``cifar-10-batches-py``, as torchvision downloads it).

:func:`find_layout` decides what a directory or archive's files mean (split folders
``<root>/<split>/<class>/<image>``, class folders ``<root>/<class>/<image>``, or a CSV label file), and
:func:`make_splits` turns it into the train / val / test :class:`Splits`, carving what the layout does
not give (written by the prepare stage as JSON). Decoding the streamed contents is
:mod:`pipeline.data.images`'s job.
"""

from __future__ import annotations

import functools
import io
import json
import os
import pickle
import posixpath
import tarfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Sequence

import numpy as np

from pipeline.core.errors import BadImageError, DatasetError
from pipeline.core.fileutil import sha256_file, sha256_json, write_json
from pipeline.core.splitting import carve_rows
from pipeline.data import archive

SOURCE_SPLITS = ("train", "test")
"""The split folders a split layout must have."""
SPLIT_NAMES = ("train", "val", "test")
"""The split folders a split layout may have: ``val/`` is optional."""
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")


@functools.cache
def image_extensions() -> frozenset[str]:
    """File suffixes PIL can read (lower case, with the dot); HEIC / HEIF with pillow-heif installed."""
    from PIL import Image

    try:  # an optional plugin: registers its opener with Pillow
        from pillow_heif import register_heif_opener
    except ImportError:
        pass
    else:
        register_heif_opener()
    return frozenset(ext.lower() for ext in Image.registered_extensions())


def is_ignored(name: str) -> bool:
    """A file or folder name that is no part of a dataset: dot-files, dot-folders, ``__MACOSX``."""
    return name.startswith(".") or name == "__MACOSX"


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
    """Base class of image sources: list the files, stream their contents, fingerprint them. What the
    folders mean (splits, classes) is the layout's business (:func:`find_layout`)."""

    location: str

    def all_files(self) -> list[str]:
        """Every file (relative posix path), in the source's streaming order; ignored names left out."""
        raise NotImplementedError

    def folders(self) -> list[str]:
        """Every folder (relative posix path), ignored names left out."""
        raise NotImplementedError

    def read(self, key: str) -> bytes:
        """The contents of one file (a label file)."""
        raise NotImplementedError

    def files(self) -> list[str]:
        """The image files (by suffix), in streaming order."""
        extensions = image_extensions()
        return [k for k in self.all_files() if PurePosixPath(k).suffix.lower() in extensions]

    def entries(self) -> list[tuple[str, str, str]]:
        """``(key, top folder, second folder)`` of every image file, in streaming order ("" where a key has
        fewer levels); what they mean is decided by :func:`find_layout`."""
        return [(k, *(list(PurePosixPath(k).parts[:-1]) + ["", ""])[:2]) for k in self.files()]

    def stream(self, keys: Sequence[str]) -> Iterator[tuple[str, object]]:
        """Yield ``(key, bytes or PIL image)`` for ``keys``, which must be in ``files()`` order."""
        raise NotImplementedError

    def content_hash(self) -> str:
        raise NotImplementedError

    def top_levels(self) -> list[str]:
        """The files and folders (ending with ``/``) of the first two levels, for messages."""
        return []


class FolderSource(Source):
    def __init__(self, root: Path):
        self.root = root
        self.location = str(root)

    def _walk(self) -> tuple[list[str], list[str]]:
        files, folders = [], []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not is_ignored(d))
            rel = Path(dirpath).relative_to(self.root)
            folders += [(rel / d).as_posix() for d in dirnames]
            files += [(rel / name).as_posix() for name in sorted(filenames) if not is_ignored(name)]
        return files, folders

    def all_files(self) -> list[str]:
        return self._walk()[0]

    def folders(self) -> list[str]:
        return self._walk()[1]

    def read(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

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

        return sha256_json([(key, file_hash(key)) for key in self.all_files()])


class TarSource(Source):
    """An image-folder tree inside a tar archive (optionally under one top-level directory)."""

    def __init__(self, path: Path):
        self.path = path
        self.location = str(path)
        self._prefix: str | None = None

    def _members(self) -> Iterator[archive.Member]:
        try:
            for name, is_file, read in archive.members(self.path):
                yield name.removeprefix("./"), is_file, read
        except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
            raise DatasetError(f"cannot read archive {self.path}: {err}") from None

    @functools.cached_property
    def _listing(self) -> tuple[list[tuple[str, bool]], str]:
        """(member name, is a file) for every member, and the top-level prefix: the one folder at the
        top, if it is not a split (files beside it, dot-files and ``__MACOSX`` do not count, but a ``.csv`` label
        file beside it keeps the archive's root); one pass, kept."""
        names = [(name, is_file) for name, is_file, _ in self._members() if PurePosixPath(name).parts]
        tops = {
            parts[0] for n, is_file in names
            if (len(parts := PurePosixPath(n).parts) > 1 or not is_file) and not is_ignored(parts[0])
        }
        label_file_at_top = any(
            is_file and len(PurePosixPath(n).parts) == 1 and n.lower().endswith(".csv") for n, is_file in names)
        prefix = ""
        if len(tops) == 1 and not tops & set(SPLIT_NAMES) and not label_file_at_top:
            prefix = tops.pop() + "/"
        return names, prefix

    def _keys(self) -> Iterator[tuple[str, bool]]:
        """(name below the top-level prefix, is a file) for every member under it."""
        names, prefix = self._listing
        return ((n.removeprefix(prefix), is_file) for n, is_file in names if n.startswith(prefix))

    def all_files(self) -> list[str]:
        self._prefix = self._listing[1]
        return [key for key, is_file in self._keys() if is_file and not any(map(is_ignored, PurePosixPath(key).parts))]

    def folders(self) -> list[str]:
        out = set()
        for key, is_file in self._keys():
            parts = PurePosixPath(key).parts
            for depth in range(1, len(parts) + (not is_file)):
                if is_ignored(parts[depth - 1]):
                    break
                out.add("/".join(parts[:depth]))
        return sorted(out)

    def read(self, key: str) -> bytes:
        self._prefix = self._listing[1]
        _, raw = next(iter(self.stream([key])))
        if isinstance(raw, Exception):
            raise DatasetError(f"cannot read {key!r} in {self.location}: {raw}")
        return raw

    def top_levels(self) -> list[str]:
        prefix = self._listing[1]
        return [prefix + p for p in _two_levels(key + "/" * (not is_file) for key, is_file in self._keys())]

    def stream(self, keys: Sequence[str]) -> Iterator[tuple[str, object]]:
        """One pass over the archive; the top-level prefix is learnt from the first match."""
        wanted = set(keys)
        order = iter(keys)
        expected = next(order, None)
        prefix = self._prefix
        for name, is_file, read in self._members():
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
            yield key, (read() if is_file else OSError("not a regular file"))
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


# -- layouts ---------------------------------------------------------------------------------
SPLIT_LAYOUT, CLASS_LAYOUT, LABEL_LAYOUT = "split folders", "class folders", "label file"


@dataclass(frozen=True)
class LabelFile:
    """A CSV label file: where it is in the source and which columns say what (``data.labels``)."""

    file: str
    path_column: str = "path"
    label_column: str = "label"
    split_column: str | None = None
    group_column: str | None = None


@dataclass
class Layout:
    """What a source's files mean: each image's key, its given split (None: to be carved) and class."""

    name: str
    items: list[tuple[str, str | None, str]]
    groups: dict[str, str] | None = None
    """Key -> group (``data.labels.group_column``): a group is never split between train, val and test."""
    left_out: dict[str, int] = field(default_factory=dict)
    """Images the layout does not use, by reason (for prepare to say so)."""


def find_layout(source: Source, labels: LabelFile | None = None) -> Layout:
    """The rule: a label file when ``labels`` names one; else split folders when a top-level folder is named
    ``train``, ``val`` or ``test`` (``train/`` and ``test/`` required, ``val/`` optional, nothing else beside
    them); else class folders, ``<root>/<class>/<image>``, every top-level folder a class. Images are taken at
    any depth below a class folder."""
    if isinstance(source, Cifar10BatchesSource):
        if labels is not None:
            raise DatasetError(f"{source.location} is the CIFAR-10 python batches: data.labels.file does not apply")
        return Layout(SPLIT_LAYOUT, [(k, split, cls) for k, split, cls in source.entries()])
    check_readable_kinds(source.location, source.all_files())
    if labels is not None:
        return _label_file_layout(source, labels)
    keys = source.files()
    tops = {PurePosixPath(k).parts[0] for k in keys if len(PurePosixPath(k).parts) > 1}
    tops |= {f for f in source.folders() if "/" not in f}
    if tops & set(SPLIT_NAMES):
        return _split_layout(source, keys, tops)
    return _class_layout(source, keys)


def _split_layout(source: Source, keys: list[str], tops: set[str]) -> Layout:
    if other := sorted(tops - set(SPLIT_NAMES)):
        raise DatasetError(f"{source.location}: split folders {sorted(tops & set(SPLIT_NAMES))} beside other folders "
                           f"{other}: give either {'/'.join(SPLIT_NAMES)} folders (val optional) or class folders only"
                           f"{_holding(source)}")
    items = [(k, parts[0], parts[1]) for k in keys if len(parts := PurePosixPath(k).parts) >= 3]
    for split in (*SOURCE_SPLITS, "val"):
        if split != "val" and not any(s == split for _, s, _ in items):
            raise DatasetError(
                f"{source.location}: split {split!r} has no images; expected <root>/{split}/<class>/<image> "
                f"for each of {list(SOURCE_SPLITS)} (val optional){_holding(source)}"
            )
    _no_empty_classes(source, items, lambda f: len(p := PurePosixPath(f).parts) == 2 and p[0] in SPLIT_NAMES)
    return Layout(SPLIT_LAYOUT, items, left_out=_count({"outside <split>/<class>/ folders": len(keys) - len(items)}))


def _class_layout(source: Source, keys: list[str]) -> Layout:
    items = [(k, None, parts[0]) for k in keys if len(parts := PurePosixPath(k).parts) >= 2]
    if len({cls for _, _, cls in items}) < 2:
        raise DatasetError(
            f"{source.location}: no layout recognised: no split folders (<root>/train/<class>/<image> and "
            f"<root>/test/<class>/<image>), fewer than two class folders (<root>/<class>/<image>), and no label "
            f"file (data.labels.file){_holding(source)}"
        )
    _no_empty_classes(source, items, lambda f: "/" not in f)
    return Layout(CLASS_LAYOUT, items, left_out=_count({"at the top level, in no class folder": len(keys) - len(items)}))


def _no_empty_classes(source: Source, items: list[tuple[str, str | None, str]], is_class_folder) -> None:
    used = {"/".join(filter(None, (split, cls))) for _, split, cls in items}
    if empty := sorted(f for f in source.folders() if is_class_folder(f) and f not in used):
        raise DatasetError(f"{source.location}: class folders with no images: {empty}")


def _count(reasons: dict[str, int]) -> dict[str, int]:
    return {reason: n for reason, n in reasons.items() if n}


UNREADABLE_KINDS = {".heic": "pillow-heif", ".heif": "pillow-heif", ".avif": "pillow-avif-plugin"}
"""Phone formats Pillow reads only with a plugin: suffix -> the package to install."""


def check_readable_kinds(location: str, names: Iterable[str]) -> None:
    """Refuse HEIC / AVIF files Pillow cannot read here (no plugin), naming one and what to install;
    without this they would be left out silently (not an image suffix Pillow knows)."""
    known = image_extensions()
    unread = [n for n in names if (s := PurePosixPath(n).suffix.lower()) in UNREADABLE_KINDS and s not in known]
    if unread:
        packages = sorted({UNREADABLE_KINDS[PurePosixPath(n).suffix.lower()] for n in unread})
        raise DatasetError(
            f"{location}: {len(unread)} images Pillow cannot read without a plugin, e.g. {unread[0]!r}: "
            f"install {' / '.join(packages)} (pip install {' '.join(packages)}), or convert them to JPEG"
        )


def _label_file_layout(source: Source, labels: LabelFile) -> Layout:
    import csv

    csv_key = PurePosixPath(labels.file).as_posix()
    if csv_key not in source.all_files():
        raise DatasetError(f"{source.location}: data.labels.file {labels.file!r} is not in it{_holding(source)}")
    text = source.read(csv_key).decode("utf-8-sig")
    reader = csv.DictReader(io.StringIO(text))
    columns = reader.fieldnames or []
    wanted = {"path_column": labels.path_column, "label_column": labels.label_column,
              "split_column": labels.split_column, "group_column": labels.group_column}
    if missing := [f"data.labels.{k}={v!r}" for k, v in wanted.items() if v is not None and v not in columns]:
        raise DatasetError(f"{labels.file}: no column {', '.join(missing)}; its columns are {columns}")
    images = source.files()
    position = {k: i for i, k in enumerate(images)}
    base = PurePosixPath(csv_key).parent
    rows, groups = [], {}
    for line, row in enumerate(reader, start=2):
        key = posixpath.normpath((base / row[labels.path_column].strip()).as_posix())
        if key not in position:
            raise DatasetError(f"{labels.file}, line {line}: {row[labels.path_column]!r} is not an image of "
                               f"{source.location} (paths are relative to the label file's folder)")
        split = row[labels.split_column].strip() if labels.split_column else None
        if split is not None and split not in SPLIT_NAMES:
            raise DatasetError(f"{labels.file}, line {line}: split {split!r} is not one of {list(SPLIT_NAMES)}")
        label = row[labels.label_column].strip()
        if not label:
            raise DatasetError(f"{labels.file}, line {line}: {key!r} has an empty label")
        rows.append((key, split, label))
        if labels.group_column:
            groups[key] = row[labels.group_column].strip()
    if len({k for k, _, _ in rows}) != len(rows):
        dup = sorted(k for k, n in Counter(k for k, _, _ in rows).items() if n > 1)
        raise DatasetError(f"{labels.file}: images listed more than once: {dup[:5]}")
    if labels.split_column:
        for split in SOURCE_SPLITS:
            if not any(s == split for _, s, _ in rows):
                raise DatasetError(f"{labels.file}: no image has split {split!r} (column {labels.split_column!r})")
    rows.sort(key=lambda r: position[r[0]])
    return Layout(LABEL_LAYOUT, rows, groups or None,
                  left_out=_count({f"not listed in {labels.file}": len(images) - len(rows)}))


# -- splits ------------------------------------------------------------------------------------
def make_splits(source: Source, val_fraction: float, subset_per_class: int | None, seed: int, *,
                test_fraction: float = 0.2, test_seed: int = 0, labels: LabelFile | None = None) -> Splits:
    """List a source, find its layout (:func:`find_layout`), carve test where the layout gives none
    (``test_fraction`` of each class, seeded by ``test_seed`` alone), subset it, and carve a stratified
    validation split from train (seeded by ``seed``) where the layout gives none."""
    layout = find_layout(source, labels)
    items = layout.items
    classes = sorted({cls for _, _, cls in items})
    if len(classes) < 2:
        raise DatasetError(f"{source.location}: found one class ({classes}); a classifier needs at least two")
    index = {c: i for i, c in enumerate(classes)}
    keys = np.array([k for k, _, _ in items])
    labels_ = np.array([index[c] for _, _, c in items], dtype=np.int64)
    given = np.array([s or "" for _, s, _ in items])
    groups = None if layout.groups is None else np.array([layout.groups[k] for k in keys])
    settings = {"val_fraction": val_fraction, "subset_per_class": subset_per_class, "seed": seed, "layout": layout.name}
    depth = 2 if layout.name == SPLIT_LAYOUT else 1  # below a class folder
    found = {s or "all": {"images": int((given == s).sum()), "in_sub_folders": int(sum(k.count("/") > depth for k in keys[given == s]))}
             for s in ("", *SPLIT_NAMES) if (given == s).any()}
    if "all" in found:  # no split given: carve test
        test = carve_rows(labels_, len(classes), test_fraction, np.random.default_rng(test_seed), groups)
        given = np.where(test, "test", "train")
        settings |= {"test_fraction": test_fraction, "test_seed": test_seed}
    train_classes = set(labels_[given == "train"].tolist())
    if missing := sorted(classes[c] for c in set(labels_.tolist()) - train_classes):
        raise DatasetError(f"{source.location}: classes with test images but no training images: {missing}")

    rng = np.random.default_rng(seed)
    arrays = {s: (keys[given == s], labels_[given == s], None if groups is None else groups[given == s])
              for s in ("train", "val", "test") if (given == s).any()}
    if subset_per_class is not None:
        for s, (k, lab, g) in arrays.items():
            take = _stratified_take(lab, subset_per_class, rng)
            arrays[s] = k[take], lab[take], None if g is None else g[take]

    if "val" in arrays:
        settings["val"] = "given"
        parts = {s: arrays[s][:2] for s in ("train", "val", "test")}
    else:
        k, lab, g = arrays["train"]
        val_mask = carve_rows(lab, len(classes), val_fraction, rng, g)
        parts = {"train": (k[~val_mask], lab[~val_mask]), "val": (k[val_mask], lab[val_mask]), "test": arrays["test"][:2]}
    return Splits(
        source=source.location,
        source_hash=source.content_hash(),
        classes=classes,
        splits={s: Split(k.tolist(), lab.tolist()) for s, (k, lab) in parts.items()},
        settings=settings,
        found=found | ({"left_out": layout.left_out} if layout.left_out else {})
        | ({"no_test_images": untested} if (untested := [c for i, c in enumerate(classes) if i not in set(parts["test"][1].tolist())]) else {}),
    )
