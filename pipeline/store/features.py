"""The feature store: cached f(x) in HDF5, the one thing the backbone and head sides share.

Layout of a feature file::

    /<split>/features   (N, D) float32 or float16, chunked by rows; a cut cache holds the
                        activations at a layer inside the backbone instead, (N, C, H, W)
    /<split>/labels     (N,) int64
    /<split>/ids        (N,) str, the image keys
    /<split>/skipped    (M,) str, images that could not be read (when skipping is allowed)
    attributes          what made the features (see FeatureSpec), with their checksum, checked before reuse

The features and labels are stored with HDF5's fletcher32 filter: the library checks every chunk's
checksum when it reads it, so bytes changed on disk are an error, never features.

Extraction commits its rows in *parts*, files in ``.<name>.partial/`` beside the output, each
written atomically, so a killed run resumes from the last committed part; the HDF5 file is
assembled from the parts into a temporary file and renamed into place only when complete. (A
*chunk* is only ever an HDF5 chunk: the unit in which the file stores and reads rows.)
"""

from __future__ import annotations

import functools
import json
import shutil
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from pipeline import __version__
from pipeline.core.errors import DatasetError, FeatureStoreError
from pipeline.core.fileutil import atomic_path, sha256_json, write_json

if TYPE_CHECKING:
    from pipeline.core.config import Params

FORMAT_VERSION = 5
CHUNK_BYTES = 4 << 20
"""Target size of one HDF5 chunk (rows of features): large reads, small partial reads."""


@dataclass(frozen=True)
class FeatureSpec:
    """Everything that determines the features; stored as the file's attributes."""

    backbone: str
    weights: str
    """As requested in params ("DEFAULT", a path, "none")."""
    weights_id: str
    """What was loaded: a torchvision weights enum member, or the checkpoint's sha256."""
    input_size: int
    preprocessing: str
    """JSON: resize_size, crop_size, interpolation, mean, std."""
    dataset_fingerprint: str
    split_seed: int
    init_seed: int
    """Seed of a randomly initialised backbone (recorded for every backbone; used only by random init)."""
    val_fraction: float
    subset_per_class: int
    """-1 for all images."""
    storage_dtype: str
    precision: str
    """What the forward pass computed in: float32, or bfloat16 (autocast)."""
    classes: tuple[str, ...]
    feature_dim: int
    """Values per image: D for pooled features, C * H * W for a cut cache."""
    cut: str = ""
    """Empty for pooled features; else the layer whose input activations these are."""
    feature_shape: tuple[int, ...] = ()
    """Shape per image: (D,) or (C, H, W)."""
    format_version: int = FORMAT_VERSION
    package_version: str = __version__

    def attrs(self) -> dict:
        """The file's attributes: the fields, and ``spec_sha256``, their checksum, which makes an edit of
        any of them (classes reordered, another feature_dim or weights_id) detectable."""
        d = asdict(self)
        d["classes"] = json.dumps(list(self.classes))
        d["feature_shape"] = json.dumps(list(self.shape))
        return d | {"spec_sha256": sha256_json(d)}

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.feature_shape) or (self.feature_dim,)

    @classmethod
    def from_attrs(cls, attrs) -> FeatureSpec:
        d = {k: attrs[k] for k in cls.__dataclass_fields__}
        d = {k: v.item() if isinstance(v, np.generic) else v for k, v in d.items()}
        d["classes"] = tuple(json.loads(d["classes"]))
        d["feature_shape"] = tuple(json.loads(d["feature_shape"]))
        return cls(**d)

    def identity(self) -> dict:
        """What a head records about the features it was trained on; checked before the head is used."""
        return {"backbone": self.backbone, "weights_id": self.weights_id, "preprocessing": self.preprocessing,
                "dataset_fingerprint": self.dataset_fingerprint, "classes": list(self.classes),
                "feature_dim": self.feature_dim, "cut": self.cut, "feature_shape": list(self.shape)}

    def backbone_recipe(self) -> dict:
        """How to rebuild the backbone that made these features (see ``backbones.load_recipe``)."""
        return {"backbone": self.backbone, "weights": self.weights, "weights_id": self.weights_id,
                "input_size": self.input_size, "init_seed": self.init_seed, "cut": self.cut,
                "preprocessing": self.preprocessing}

    def differences(self, expected: dict) -> list[str]:
        """Human-readable differences between this spec and ``expected`` (a subset of fields)."""
        mine = asdict(self)
        return [
            f"{k}: the file has {mine[k]!r}, the current settings want {v!r}"
            if not isinstance(v, frozenset) else f"{k}: the file has {mine[k]!r}, the current settings want one of {sorted(v)}"
            for k, v in expected.items()
            if (mine[k] not in v if isinstance(v, frozenset) else mine[k] != v)
        ]


# -- writing ------------------------------------------------------------------------------
class PartialFeatures:
    """The committed parts of an extraction in progress, keyed by (split, part index); part ``i``
    holds rows ``[i * part_rows, (i + 1) * part_rows)`` of its split."""

    def __init__(self, out_path: str | Path, spec: FeatureSpec, part_rows: int, compute: str = "cpu-float32"):
        self.out_path = Path(out_path)
        self.dir = self.out_path.parent / f".{self.out_path.name}.partial"
        self.spec = spec
        self.part_rows = part_rows
        # parts computed another way (GPU bf16 against CPU float32) are not mixed into one file
        meta = {"spec": spec.attrs(), "part_rows": part_rows, "compute": compute}
        meta_path = self.dir / "meta.json"
        if meta_path.exists() and json.loads(meta_path.read_text()) != meta:
            print(f"discarding partial extraction in {self.dir}: it was made with other settings")
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if not meta_path.exists():
            write_json(meta_path, meta)

    def _part_path(self, split: str, index: int) -> Path:
        return self.dir / f"{split}-{index:06d}.npz"

    def done(self, split: str, n_rows: int) -> set[int]:
        """The parts of ``split`` (of ``n_rows`` rows) that are committed and intact. A part that does not
        load or holds other rows than its own (truncated by a crash, corrupt) is discarded, to be computed again."""
        done = set()
        for path in sorted(self.dir.glob(f"{split}-*.npz")):
            index = int(path.stem.rsplit("-", 1)[1])
            try:
                self.read_valid(split, index, n_rows)
                done.add(index)
            except FeatureStoreError as err:
                print(f"{err}: discarding it, it is computed again")
                path.unlink(missing_ok=True)
        return done

    def write_part(self, split: str, index: int, features: np.ndarray, valid: np.ndarray) -> None:
        with atomic_path(self._part_path(split, index)) as tmp, open(tmp, "wb") as f:
            np.savez(f, features=features, valid=valid)

    def read_valid(self, split: str, index: int, n_rows: int) -> np.ndarray:
        """The part's ``valid`` flags, once they and its features' header (read without the data) are
        those of its rows of a split of ``n_rows`` rows; FeatureStoreError naming the part if not."""
        path, rows = self._part_path(split, index), min(self.part_rows, n_rows - index * self.part_rows)
        try:
            with np.load(path, allow_pickle=False) as npz:
                valid = npz["valid"]
                with npz.zip.open("features.npy") as f:
                    fmt = np.lib.format
                    major, _ = fmt.read_magic(f)
                    shape, _, dtype = (fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0)(f)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            raise FeatureStoreError(f"part {path} cannot be read ({type(err).__name__}: {err})") from None
        expected = (rows, *self.spec.shape)
        if (valid.shape != (rows,) or valid.dtype != bool or shape != expected
                or dtype != np.dtype(self.spec.storage_dtype)):
            raise FeatureStoreError(f"part {path} holds {len(valid)} rows of {shape[1:]} {dtype}, "
                                    f"expected {rows} rows of {self.spec.shape} {self.spec.storage_dtype}")
        return valid

    def read_part(self, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
        path = self._part_path(split, index)
        try:
            with np.load(path, allow_pickle=False) as npz:
                return npz["features"], npz["valid"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:  # its CRC-32 checked on reading
            raise FeatureStoreError(f"part {path} cannot be read ({type(err).__name__}: {err})") from None

    def _discard(self, split: str, index: int, err: FeatureStoreError) -> FeatureStoreError:
        """Remove a part found damaged while assembling; the error says to run again, which computes it again."""
        self._part_path(split, index).unlink(missing_ok=True)
        return FeatureStoreError(f"{err}; it was discarded: run the extract stage again, it computes that part "
                                 f"again and keeps the other parts in {self.dir}")

    def assemble(self, spec: FeatureSpec, splits: dict[str, tuple[list[str], list[int]]]) -> Path:
        """Write the final HDF5 file from the parts (streaming, one part in memory at a time). First checks
        what can be checked without writing: every part, the images left after skipping, the free disk."""
        import h5py

        n_parts = {split: -(-len(keys) // self.part_rows) for split, (keys, _) in splits.items()}
        valid = {}
        for split, (keys, _) in splits.items():
            flags = []
            for i in range(n_parts[split]):
                try:
                    flags.append(self.read_valid(split, i, len(keys)))
                except FeatureStoreError as err:
                    raise self._discard(split, i, err) from None
            valid[split] = np.concatenate(flags or [np.zeros(0, bool)])
        self._check_skipped(spec, splits, valid)
        self._check_space(spec, splits, valid)
        with atomic_path(self.out_path) as tmp:
            with h5py.File(tmp, "w") as h5:
                h5.attrs.update(spec.attrs())
                for split, (keys, labels) in splits.items():
                    keep = np.flatnonzero(valid[split])
                    group = h5.create_group(split)
                    rows = max(1, min(len(keep), 1024, CHUNK_BYTES // (spec.feature_dim * np.dtype(spec.storage_dtype).itemsize)))
                    # fletcher32: a checksum per chunk, checked by HDF5 on every read (needs chunks, so not when empty)
                    dset = group.create_dataset(
                        "features", shape=(len(keep), *spec.shape), dtype=spec.storage_dtype,
                        chunks=(rows, *spec.shape) if len(keep) else None, fletcher32=len(keep) > 0,
                    )
                    row = 0
                    for i in range(n_parts[split]):
                        try:
                            feats, ok = self.read_part(split, i)
                        except FeatureStoreError as err:
                            raise self._discard(split, i, err) from None
                        dset[row : row + ok.sum()] = feats[ok]
                        row += int(ok.sum())
                    group.create_dataset("labels", data=np.asarray(labels, np.int64)[keep], fletcher32=len(keep) > 0)
                    group.create_dataset("ids", data=np.asarray(keys, dtype=object)[keep], dtype=h5py.string_dtype())
                    skipped = [keys[i] for i in np.flatnonzero(~valid[split])]
                    group.create_dataset("skipped", data=np.asarray(skipped, dtype=object), dtype=h5py.string_dtype())
                    if skipped:
                        print(f"{split}: skipped {len(skipped)} unreadable images: {skipped[:10]}{' ...' if len(skipped) > 10 else ''}")
        shutil.rmtree(self.dir)
        return self.out_path

    def _check_skipped(self, spec: FeatureSpec, splits: dict[str, tuple[list[str], list[int]]],
                       valid: dict[str, np.ndarray]) -> None:
        """Refuse a file that skipping unreadable images leaves without a split's images or without the
        training images of a class. The parts holding the skipped images are discarded, the others kept:
        a re-run once the images are fixed reads only those again."""
        empty = []
        for split, (keys, labels) in splits.items():
            if len(keys) and not valid[split].any():
                empty.append(f"no {split} image")
            elif split == "train" and not valid[split].all():
                kept = set(np.asarray(labels)[valid[split]].tolist())
                empty += [f"no training image of class {c!r}" for i, c in enumerate(spec.classes) if i not in kept]
        if not empty:
            return
        skipped = [k for split, (keys, _) in splits.items() for k, ok in zip(keys, valid[split]) if not ok]
        for split in splits:
            for i in set((np.flatnonzero(~valid[split]) // self.part_rows).tolist()):
                self._part_path(split, i).unlink(missing_ok=True)
        raise DatasetError(
            f"skipping unreadable images (backbone.on_bad_image: skip) leaves {', '.join(empty)}; the {len(skipped)} "
            f"unreadable images: {skipped[:10]}{' ...' if len(skipped) > 10 else ''}: replace them with readable images "
            f"and run the extract stage again (it reads only those again), or remove them and run prepare"
        )

    def _check_space(self, spec: FeatureSpec, splits: dict[str, tuple[list[str], list[int]]],
                     valid: dict[str, np.ndarray]) -> None:
        """Refuse to start assembling the file on a disk without room for it (HDF5 may crash when the
        disk fills up under it): the parts stay, and a re-run once there is room assembles them."""
        row_bytes = spec.feature_dim * np.dtype(spec.storage_dtype).itemsize + 8  # features and label
        needed = sum(int(valid[split].sum()) * row_bytes + sum(len(k) + 32 for k in keys)  # ids, as stored
                     for split, (keys, _) in splits.items())
        needed += needed // 20 + (16 << 20)  # HDF5's own structures, and a margin
        free = shutil.disk_usage(self.out_path.parent).free
        if needed > free:
            raise FeatureStoreError(
                f"assembling {self.out_path} needs about {needed / 2**20:,.1f} MiB of disk, {self.out_path.parent} has "
                f"{free / 2**20:,.1f} MiB free: free some space and run the extract stage again (the features "
                f"extracted so far stay in {self.dir} and are not computed again)"
            )


# -- reading ------------------------------------------------------------------------------
def expected_spec(params: Params, splits_path: str | Path, input: str = "pooled") -> dict:
    """The FeatureSpec fields that the current params and prepared splits require of the pooled
    features (``input="pooled"``) or of the cut cache (``"cut"``)."""
    b = params.backbone
    try:
        fingerprint = json.loads(Path(splits_path).read_text())["fingerprint"]
    except FileNotFoundError:
        raise FileNotFoundError(f"splits file {splits_path} does not exist; run the prepare stage first") from None
    except (ValueError, KeyError) as err:
        raise FeatureStoreError(f"splits file {splits_path} is damaged ({err}); run the prepare stage again") from None
    expected = {
        "backbone": b.name,
        "weights": "none" if b.weights is None else b.weights,
        "input_size": b.input_size,
        "init_seed": params.seed,
        "storage_dtype": b.cut_storage_dtype if input == "cut" else b.storage_dtype,
        # auto is whatever the extracting machine computes natively: either is consistent with it
        "precision": frozenset({"float32", "bfloat16"}) if b.precision == "auto" else b.precision,
        "cut": (b.cut or "") if input == "cut" else "",
        "dataset_fingerprint": fingerprint,
    }
    if b.input_size is None:  # the native size: only the backbone side knows it (the file records the size used)
        del expected["input_size"]
    return expected


def fits_in_memory(nbytes: int) -> bool:
    """Whether features of ``nbytes`` (float32) can be loaded whole: a quarter of the free memory,
    since fitting holds a normalised copy and the solver's own buffers."""
    try:  # MemAvailable counts reclaimable page cache, unlike MemFree
        meminfo = Path("/proc/meminfo").read_text()
        available = int(meminfo.split("MemAvailable:")[1].split()[0]) * 1024
    except (OSError, IndexError, ValueError):
        return True
    return nbytes < available / 4


_DAMAGE = (OSError, RuntimeError, KeyError, ValueError, TypeError)
"""What h5py raises on a damaged file: a chunk failing its checksum, metadata that does not parse."""


def _reads(method):
    """A FeatureStore method that reads the file: damage found on the way is a FeatureStoreError."""

    @functools.wraps(method)
    def checked(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except FeatureStoreError:
            raise
        except _DAMAGE as err:
            raise self._damaged(err) from None

    return checked


def _chunks_in_file(dset, file_size: int) -> bool:
    """Whether every chunk of ``dset`` is stored, inside the file: a damaged chunk index reads as fill values.
    One pass over the index (``chunk_iter``, HDF5 >= 1.12.3; without it, not checked)."""
    if not dset.chunks or not dset.size or not hasattr(dset.id, "chunk_iter"):
        return True
    chunks = []
    dset.id.chunk_iter(chunks.append)
    n_chunks = int(np.prod([-(-n // c) for n, c in zip(dset.shape, dset.chunks)]))
    return len(chunks) == n_chunks and all(c.byte_offset + c.size <= file_size for c in chunks)


class FeatureStore:
    """Read access to a feature file, with its spec, checked on opening: format version, the checksum of
    the attributes, the shapes of every split. Use as a context manager."""

    def __init__(self, path: str | Path):
        import h5py

        self.path = Path(path)
        if not self.path.exists():
            raise FeatureStoreError(f"feature file {self.path} does not exist; run the extract stage first")
        try:
            self._h5 = h5py.File(self.path, "r")
        except _DAMAGE as err:
            raise self._damaged(err) from None
        try:
            self._check()
        except BaseException:
            self._h5.close()
            raise

    def _damaged(self, err: BaseException) -> FeatureStoreError:
        return FeatureStoreError(f"feature file {self.path} is truncated, corrupt or of another format "
                                 f"({type(err).__name__}: {err}); delete it and run the extract stage again")

    @_reads
    def _check(self) -> None:
        attrs = self._h5.attrs
        version, placeholder = attrs.get("format_version"), attrs.get("placeholder")
        if placeholder is not None:
            raise FeatureStoreError(f"feature file {self.path}: {placeholder}")
        if version is not None and version != FORMAT_VERSION:
            raise FeatureStoreError(f"feature file {self.path} has format version {version}, this version of the "
                                    f"pipeline reads {FORMAT_VERSION}: run the extract stage again (dvc repro)")
        self.spec = FeatureSpec.from_attrs(attrs)
        if attrs.get("spec_sha256") != self.spec.attrs()["spec_sha256"]:
            raise FeatureStoreError(
                f"feature file {self.path}: its attributes (classes, shapes, weights, ...) do not match the checksum "
                "written with them: the file was edited or is damaged; delete it and run the extract stage again"
            )
        for split in self.splits:
            group = self._h5[split]
            features, n_labels, n_ids = group["features"], len(group["labels"]), len(group["ids"])
            if (features.shape[1:] != self.spec.shape or features.dtype != np.dtype(self.spec.storage_dtype)
                    or not features.shape[0] == n_labels == n_ids):
                raise FeatureStoreError(
                    f"feature file {self.path}: {split} holds features of shape {features.shape} {features.dtype}, "
                    f"{n_labels} labels and {n_ids} ids, where the attributes say rows of {self.spec.shape} "
                    f"{self.spec.storage_dtype}: the file is damaged or was edited; delete it and run the extract "
                    "stage again"
                )
            for name in ("features", "labels"):
                if not _chunks_in_file(group[name], self.path.stat().st_size):
                    raise FeatureStoreError(
                        f"feature file {self.path}: the index of {split}/{name} points outside the file (HDF5 would read "
                        "zeros there): the file is damaged; delete it and run the extract stage again"
                    )

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._h5.close()

    @property
    @_reads
    def splits(self) -> list[str]:
        return list(self._h5.keys())

    def check(self, expected: dict) -> None:
        """Refuse a file whose spec differs from ``expected`` (FeatureSpec field -> value)."""
        if "cut" in expected:
            self.require_input("cut" if expected["cut"] else "pooled")
        diffs = self.spec.differences(expected)
        if diffs:
            raise FeatureStoreError(
                f"feature file {self.path} was made with other settings than the current ones:\n  "
                + "\n  ".join(diffs)
                + "\nre-run the extract stage (dvc repro) to recompute it"
            )

    def _group(self, split: str):
        if split not in self._h5:
            raise FeatureStoreError(f"feature file {self.path} has no split {split!r}; it has {self.splits}")
        return self._h5[split]

    @_reads
    def n_rows(self, split: str) -> int:
        return len(self._group(split)["labels"])

    def nbytes(self, split: str) -> int:
        """Size of the split's features as float32 in memory."""
        return self.n_rows(split) * self.spec.feature_dim * 4

    @_reads
    def labels(self, split: str) -> np.ndarray:
        """The split's labels (int64), without its features."""
        y = self._group(split)["labels"][:].astype(np.int64)
        if len(y) and (y.min() < 0 or y.max() >= len(self.spec.classes)):
            raise FeatureStoreError(f"{self.path}: {split} labels outside 0..{len(self.spec.classes) - 1}")
        return y

    @_reads
    def ids(self, split: str) -> list[str]:
        return [s.decode() if isinstance(s, bytes) else s for s in self._group(split)["ids"][:]]

    @_reads
    def chunk_rows(self, split: str) -> int:
        """Rows per HDF5 chunk of the split's features (the unit of reading)."""
        chunks = self._group(split)["features"].chunks
        return chunks[0] if chunks else max(1, self.n_rows(split))

    def block_rows(self, max_bytes: int = 256 << 20) -> int:
        """Rows per block so that a block is at most ``max_bytes`` as float32."""
        return max(1, max_bytes // (4 * self.spec.feature_dim))

    @_reads
    def read(self, split: str, start: int, stop: int, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
        """Rows [start, stop) as (features, labels), checked for NaN/inf and the label range (and, by
        HDF5, against the checksums of their chunks)."""
        group = self._group(split)
        try:
            X = np.asarray(group["features"][start:stop], dtype=dtype)
            y = group["labels"][start:stop].astype(np.int64)
        except OSError as err:
            raise FeatureStoreError(f"feature file {self.path} is damaged: {split} rows {start}..{stop} do not match their "
                                    f"checksums or cannot be read ({err}); delete it and run the extract stage again") from None
        if not np.isfinite(X).all():  # (the row found only then: reducing along rows is 8x slower)
            finite = np.isfinite(X.reshape(len(X), -1)).all(axis=1)
            raise FeatureStoreError(f"{self.path}: {split} features hold NaN or inf (first at row {start + int(np.flatnonzero(~finite)[0])})")
        n_classes = len(self.spec.classes)
        if len(y) and (y.min() < 0 or y.max() >= n_classes):
            raise FeatureStoreError(f"{self.path}: {split} labels outside 0..{n_classes - 1}")
        return X, y

    def iter_blocks(self, split: str, rows: int | None = None, dtype=np.float32) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (features, labels) in blocks of ``rows`` (default :meth:`block_rows`), checked as by :meth:`read`."""
        rows = rows or self.block_rows()
        n = self.n_rows(split)
        for start in range(0, n, rows):
            yield self.read(split, start, min(n, start + rows), dtype)

    def require_input(self, what: str) -> None:
        """Refuse to train a head that reads ``what`` (``pooled`` or ``cut``) on the other kind of file."""
        mine = "cut" if self.spec.cut else "pooled"
        if what != mine:
            raise FeatureStoreError(
                f"{self.path} holds {'the cut cache (activations at ' + self.spec.cut + ')' if self.spec.cut else 'pooled features'}; "
                f"this head trains on {'the cut cache (cut.h5)' if what == 'cut' else 'pooled features (pooled.h5)'}"
            )

    def check_head(self, head_metadata: dict, head_path: str | Path) -> None:
        """Refuse a head that was trained on other features than these."""
        if head_metadata.get("features") != self.spec.identity():
            raise FeatureStoreError(
                f"head {head_path} was trained on other features (backbone, weights, preprocessing or data) "
                f"than {self.path}; re-run the train stage"
            )

    def load(self, split: str, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
        """The whole split in memory as (features (N, D) or (N, C, H, W), labels int64 (N,)): read into one
        array (a split of one block as read, without a copy)."""
        n, rows = self.n_rows(split), self.block_rows()
        if n == 0:
            return np.zeros((0, *self.spec.shape), dtype), np.zeros(0, np.int64)
        if n <= rows:
            return self.read(split, 0, n, dtype)
        X, y = np.empty((n, *self.spec.shape), dtype), np.empty(n, np.int64)
        for start in range(0, n, rows):
            X[start : start + rows], y[start : start + rows] = self.read(split, start, min(n, start + rows), dtype)
        return X, y


class SplitView(FeatureStore):
    """Another arrangement of an open store's rows into splits, read from the same file: each split of
    the view is rows of the store's splits, ``{"train": [("train", rows), ("val", rows)], ...}`` with
    ``rows`` increasing. A head fits on a view as on the file (``fit_store``); reading is checked as
    always. The view does not own the file: closing it leaves the store open."""

    def __init__(self, store: FeatureStore, splits: dict[str, list[tuple[str, np.ndarray]]]):
        self._store, self.path, self.spec = store, store.path, store.spec
        self._pieces: dict[str, list[tuple[str, np.ndarray]]] = {}
        for split, pieces in splits.items():
            self._pieces[split] = []
            for source, rows in pieces:
                rows = np.asarray(rows, dtype=np.int64)
                n = store.n_rows(source)
                if rows.ndim != 1 or (len(rows) and (rows[0] < 0 or rows[-1] >= n or (np.diff(rows) <= 0).any())):
                    raise ValueError(f"split view {split!r}: rows of {source!r} must increase, within 0..{n - 1}")
                self._pieces[split].append((source, rows))

    def close(self) -> None:
        pass

    @property
    def splits(self) -> list[str]:
        return list(self._pieces)

    def _rows(self, split: str) -> list[tuple[str, np.ndarray]]:
        if split not in self._pieces:
            raise FeatureStoreError(f"feature file {self.path} (a view of it) has no split {split!r}; it has {self.splits}")
        return self._pieces[split]

    def n_rows(self, split: str) -> int:
        return sum(len(rows) for _, rows in self._rows(split))

    def labels(self, split: str) -> np.ndarray:
        return np.concatenate([self._store.labels(source)[rows] for source, rows in self._rows(split)] or [np.zeros(0, np.int64)])

    def ids(self, split: str) -> list[str]:
        out = []
        for source, rows in self._rows(split):
            ids = self._store.ids(source)
            out += [ids[i] for i in rows]
        return out

    def chunk_rows(self, split: str) -> int:
        return min((self._store.chunk_rows(source) for source, _ in self._rows(split)), default=1)

    def read(self, split: str, start: int, stop: int, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
        """Rows [start, stop) of the view's split. The file is read in contiguous runs of at most
        :meth:`block_rows` rows, each spanning the wanted rows it holds (and those between them)."""
        parts, offset, window = [], 0, self.block_rows()
        for source, rows in self._rows(split):
            wanted = rows[max(start - offset, 0) : max(stop - offset, 0)]
            offset += len(rows)
            i = 0
            while i < len(wanted):
                j = int(np.searchsorted(wanted, wanted[i] + window))
                X, y = self._store.read(source, int(wanted[i]), int(wanted[j - 1]) + 1, dtype)
                take = wanted[i:j] - wanted[i]
                parts.append((X[take], y[take]))
                i = j
        if not parts:
            return np.zeros((0, *self.spec.shape), dtype), np.zeros(0, np.int64)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
