"""The feature store: cached f(x) in HDF5, the one thing the backbone and head sides share.

Layout of a feature file::

    /<split>/features   (N, D) float32 or float16, chunked by rows; a cut cache holds the
                        activations at a layer inside the backbone instead, (N, C, H, W)
    /<split>/labels     (N,) int64
    /<split>/ids        (N,) str, the image keys
    /<split>/skipped    (M,) str, images that could not be read (when skipping is allowed)
    attributes          what made the features (see FeatureSpec), checked before reuse

Extraction commits its rows in *parts*, files in ``.<name>.partial/`` beside the output, each
written atomically, so a killed run resumes from the last committed part; the HDF5 file is
assembled from the parts into a temporary file and renamed into place only when complete. (A
*chunk* is only ever an HDF5 chunk: the unit in which the file stores and reads rows.)
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from pipeline import __version__
from pipeline.errors import FeatureStoreError
from pipeline.fileutil import atomic_path, write_json

if TYPE_CHECKING:
    from pipeline.config import Params

FORMAT_VERSION = 3
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
        d = asdict(self)
        d["classes"] = json.dumps(list(self.classes))
        d["feature_shape"] = json.dumps(list(self.shape))
        return d

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
            for k, v in expected.items()
            if mine[k] != v
        ]


# -- writing ------------------------------------------------------------------------------
class PartialFeatures:
    """The committed parts of an extraction in progress, keyed by (split, part index); part ``i``
    holds rows ``[i * part_rows, (i + 1) * part_rows)`` of its split."""

    def __init__(self, out_path: str | Path, spec: FeatureSpec, part_rows: int, compute: str = "cpu-float32"):
        self.out_path = Path(out_path)
        self.dir = self.out_path.parent / f".{self.out_path.name}.partial"
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

    def done(self, split: str) -> set[int]:
        return {int(p.stem.rsplit("-", 1)[1]) for p in self.dir.glob(f"{split}-*.npz")}

    def write_part(self, split: str, index: int, features: np.ndarray, valid: np.ndarray) -> None:
        with atomic_path(self._part_path(split, index)) as tmp, open(tmp, "wb") as f:
            np.savez(f, features=features, valid=valid)

    def read_valid(self, split: str, index: int) -> np.ndarray:
        with np.load(self._part_path(split, index), allow_pickle=False) as npz:
            return npz["valid"]

    def read_part(self, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
        with np.load(self._part_path(split, index), allow_pickle=False) as npz:
            return npz["features"], npz["valid"]

    def assemble(self, spec: FeatureSpec, splits: dict[str, tuple[list[str], list[int]]]) -> Path:
        """Write the final HDF5 file from the parts (streaming, one part in memory at a time)."""
        import h5py

        with atomic_path(self.out_path) as tmp:
            with h5py.File(tmp, "w") as h5:
                h5.attrs.update(spec.attrs())
                for split, (keys, labels) in splits.items():
                    n_parts = -(-len(keys) // self.part_rows)
                    valid = np.concatenate([self.read_valid(split, i) for i in range(n_parts)] or [np.zeros(0, bool)])
                    if len(valid) != len(keys):
                        raise FeatureStoreError(f"{self.dir}: parts of {split} hold {len(valid)} rows, expected {len(keys)}")
                    keep = np.flatnonzero(valid)
                    group = h5.create_group(split)
                    rows = max(1, min(len(keep), 1024, CHUNK_BYTES // (spec.feature_dim * np.dtype(spec.storage_dtype).itemsize)))
                    dset = group.create_dataset(
                        "features", shape=(len(keep), *spec.shape), dtype=spec.storage_dtype,
                        chunks=(rows, *spec.shape) if len(keep) else None,
                    )
                    row = 0
                    for i in range(n_parts):
                        feats, ok = self.read_part(split, i)
                        dset[row : row + ok.sum()] = feats[ok]
                        row += int(ok.sum())
                    group.create_dataset("labels", data=np.asarray(labels, np.int64)[keep])
                    group.create_dataset("ids", data=np.asarray(keys, dtype=object)[keep], dtype=h5py.string_dtype())
                    skipped = [keys[i] for i in np.flatnonzero(~valid)]
                    group.create_dataset("skipped", data=np.asarray(skipped, dtype=object), dtype=h5py.string_dtype())
                    if skipped:
                        print(f"{split}: skipped {len(skipped)} unreadable images: {skipped[:10]}{' ...' if len(skipped) > 10 else ''}")
        shutil.rmtree(self.dir)
        return self.out_path


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
    return {
        "backbone": b.name,
        "weights": "none" if b.weights is None else b.weights,
        "input_size": b.input_size,
        "init_seed": params.seed,
        "storage_dtype": b.cut_storage_dtype if input == "cut" else b.storage_dtype,
        "cut": (b.cut or "") if input == "cut" else "",
        "dataset_fingerprint": fingerprint,
    }


def fits_in_memory(nbytes: int) -> bool:
    """Whether features of ``nbytes`` (float32) can be loaded whole: a quarter of the free memory,
    since fitting holds a normalised copy and the solver's own buffers."""
    try:  # MemAvailable counts reclaimable page cache, unlike MemFree
        meminfo = Path("/proc/meminfo").read_text()
        available = int(meminfo.split("MemAvailable:")[1].split()[0]) * 1024
    except (OSError, IndexError, ValueError):
        return True
    return nbytes < available / 4


class FeatureStore:
    """Read access to a feature file, with its spec; use as a context manager."""

    def __init__(self, path: str | Path):
        import h5py

        self.path = Path(path)
        if not self.path.exists():
            raise FeatureStoreError(f"feature file {self.path} does not exist; run the extract stage first")
        try:
            self._h5 = h5py.File(self.path, "r")
            version, placeholder = self._h5.attrs.get("format_version"), self._h5.attrs.get("placeholder")
            if placeholder is not None or (version is not None and version != FORMAT_VERSION):
                self._h5.close()
                raise FeatureStoreError(f"feature file {self.path}: {placeholder}" if placeholder is not None else
                                        f"feature file {self.path} has format version {version}, this version of the "
                                        f"pipeline reads {FORMAT_VERSION}: run the extract stage again (dvc repro)")
            self.spec = FeatureSpec.from_attrs(self._h5.attrs)
        except (OSError, KeyError, ValueError, TypeError) as err:
            raise FeatureStoreError(
                f"feature file {self.path} is truncated, corrupt or of another format ({err}); "
                "delete it and run the extract stage again"
            ) from None

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._h5.close()

    @property
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

    def n_rows(self, split: str) -> int:
        return len(self._group(split)["labels"])

    def nbytes(self, split: str) -> int:
        """Size of the split's features as float32 in memory."""
        return self.n_rows(split) * self.spec.feature_dim * 4

    def ids(self, split: str) -> list[str]:
        return [s.decode() if isinstance(s, bytes) else s for s in self._group(split)["ids"][:]]

    def chunk_rows(self, split: str) -> int:
        """Rows per HDF5 chunk of the split's features (the unit of reading)."""
        chunks = self._group(split)["features"].chunks
        return chunks[0] if chunks else max(1, self.n_rows(split))

    def block_rows(self, max_bytes: int = 256 << 20) -> int:
        """Rows per block so that a block is at most ``max_bytes`` as float32."""
        return max(1, max_bytes // (4 * self.spec.feature_dim))

    def read(self, split: str, start: int, stop: int, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
        """Rows [start, stop) as (features, labels), checked for NaN/inf and the label range."""
        group = self._group(split)
        X = np.asarray(group["features"][start:stop], dtype=dtype)
        y = group["labels"][start:stop].astype(np.int64)
        finite = np.isfinite(X.reshape(len(X), -1)).all(axis=1)
        if not finite.all():
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
                f"this head trains on {'the cut cache (extract-cut)' if what == 'cut' else 'pooled features (extract)'}"
            )

    def check_head(self, head_metadata: dict, head_path: str | Path) -> None:
        """Refuse a head that was trained on other features than these."""
        if head_metadata.get("features") != self.spec.identity():
            raise FeatureStoreError(
                f"head {head_path} was trained on other features (backbone, weights, preprocessing or data) "
                f"than {self.path}; re-run the train stage"
            )

    def load(self, split: str, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
        """The whole split in memory as (features (N, D) or (N, C, H, W), labels int64 (N,))."""
        blocks = list(self.iter_blocks(split, dtype=dtype))
        if not blocks:
            return np.zeros((0, *self.spec.shape), dtype), np.zeros(0, np.int64)
        return np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])
