"""Leakage between splits: near-copies of one image in two splits, found on the cached pooled features.

Web-gathered datasets often hold the same picture more than once; a test image whose copy is in the
training images measures memory, not generalisation. Three steps:

1. :func:`nearest_neighbours`: for every image of a query split, its nearest image of a base split by
   cosine similarity of the pooled features f(x). Exact and blockwise: query blocks x base blocks, a
   running top-1 per query, so memory is a few blocks whatever the dataset size (never an N x M matrix).
2. :func:`candidates`: the pairs at or above a cosine threshold.
3. :func:`pixel_distance`: a cheap check on the pixels: both images in grey, reduced to a few pixels a
   side by area averaging, their mean absolute difference in grey levels; a candidate within the
   tolerance is *confirmed*.

The pairs are a table (:func:`write_pairs` / :func:`read_pairs`, ``evaluation/leakage/pairs.csv``) that
the compare stage reads to score every head without the test images that have a confirmed near-copy in
the images heads are fitted on (:func:`near_copies`). Decoding the images is the data side's job (the
leakage stage); this module only sees features, ids and pixel arrays.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from pipeline.errors import PipelineError
from pipeline.fileutil import atomic_path
from pipeline.neighbours import Blocks, top_k_cosine

SPLIT_PAIRS: tuple[tuple[str, str], ...] = (("test", "train"), ("test", "val"), ("val", "train"), ("test", "test"))
"""(query split, base split) searched by the leakage stage: test and val against the images heads are
fitted on (train; val too, for the heads refit on train + val), and test against itself."""
FITTED_ON = ("train", "val")
"""The splits a head may be fitted on: a test image with a confirmed near-copy in one of them is left
out of the test figure "without near-copies"."""

@dataclass(frozen=True)
class Nearest:
    """For each query row: the index of its nearest base row (-1 when there is none) and their cosine
    similarity (-inf when there is none)."""

    index: np.ndarray
    similarity: np.ndarray


def store_blocks(store, split: str, rows: int) -> Callable[[], Iterator[np.ndarray]]:
    """The features of ``split`` of a :class:`~pipeline.features.FeatureStore`, as blocks of ``rows``."""
    return lambda: (X for X, _ in store.iter_blocks(split, rows))


def nearest_neighbours(queries: Blocks, base: Blocks, *, exclude_self: bool = False, block_rows: int = 4096,
                       device=None) -> Nearest:
    """The nearest base row of every query row by cosine similarity, exactly, in blocks
    (:func:`pipeline.neighbours.top_k_cosine` with k = 1). ``exclude_self``: queries and base are the
    same rows in the same order, and a row is never its own neighbour."""
    found = top_k_cosine(queries, base, 1, exclude_self=exclude_self, block_rows=block_rows, device=device)
    return Nearest(found.index[:, 0], found.similarity[:, 0])


def search(store, block_rows: int, device=None) -> dict[tuple[str, str], Nearest]:
    """The nearest neighbours of every split pair of :data:`SPLIT_PAIRS` that a
    :class:`~pipeline.features.FeatureStore` has images for, its features read in blocks of ``block_rows``."""
    sizes = {s: store.n_rows(s) for s in store.splits}
    found = {}
    for query, base in SPLIT_PAIRS:
        if sizes.get(query, 0) and sizes.get(base, 0) > (query == base):
            found[query, base] = nearest_neighbours(store_blocks(store, query, block_rows),
                                                    store_blocks(store, base, block_rows),
                                                    exclude_self=query == base, device=device)
    return found


# -- pairs -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pair:
    """A query image and its nearest image in the base split, with their cosine similarity; the pixel
    check fills ``pixel_distance`` (mean absolute grey-level difference, 0-255) and ``confirmed``."""

    split_pair: str
    """``<query split>-<base split>``: ``test-train``, ``test-val``, ``val-train``, ``test-test``."""
    id: str
    nearest_id: str
    cosine: float
    pixel_distance: float = float("nan")
    confirmed: bool = False


def split_pair_name(query: str, base: str) -> str:
    return f"{query}-{base}"


def pairs_of(query_ids: Sequence[str], base_ids: Sequence[str], found: Nearest, split_pair: str,
             min_cosine: float = -np.inf, limit: int | None = None) -> list[Pair]:
    """The pairs (query, its nearest base image) with cosine >= ``min_cosine``, closest first (ties by
    id), at most ``limit``. Within one split (``test-test``) the pair of a and b is listed once, as
    (the smaller id, the larger id), however many of the two found the other."""
    order = np.lexsort((np.asarray(query_ids, dtype=object).astype(str), -found.similarity))
    within = split_pair.split("-")[0] == split_pair.split("-")[1]
    out, seen = [], set()
    for i in order:
        cosine = float(found.similarity[i])
        if found.index[i] < 0 or not cosine >= min_cosine or (limit is not None and len(out) >= limit):
            break
        a, b = query_ids[i], base_ids[found.index[i]]
        if within:
            a, b = sorted((a, b))
            if (a, b) in seen:
                continue
            seen.add((a, b))
        out.append(Pair(split_pair, a, b, cosine))
    return out


def candidates(query_ids: Sequence[str], base_ids: Sequence[str], found: Nearest, split_pair: str,
               threshold: float) -> list[Pair]:
    """The candidate near-copies: pairs at or above the cosine ``threshold``, closest first."""
    return pairs_of(query_ids, base_ids, found, split_pair, min_cosine=threshold)


# -- the pixel check -----------------------------------------------------------------------------
LUMA = np.array([0.299, 0.587, 0.114], np.float32)
"""ITU-R 601 luma weights: RGB to grey."""


def small_grey(image: np.ndarray, size: int) -> np.ndarray:
    """An image (H, W, 3) RGB or (H, W) grey, uint8 -> (size, size) float32 grey levels 0-255: luma, then
    the mean over each of size x size areas (adaptive average pooling: equal areas when size divides
    the sides; the aspect ratio is not kept)."""
    import torch
    import torch.nn.functional as F

    image = np.asarray(image)
    grey = image.astype(np.float32) @ LUMA if image.ndim == 3 else image.astype(np.float32)
    return F.adaptive_avg_pool2d(torch.from_numpy(np.ascontiguousarray(grey))[None, None], size)[0, 0].numpy()


def pixel_distance(a: np.ndarray, b: np.ndarray, size: int) -> float:
    """Mean absolute difference (grey levels, 0-255) of two images reduced by :func:`small_grey`."""
    return float(np.abs(small_grey(a, size) - small_grey(b, size)).mean())


def check_pixels(pairs: Iterable[Pair], small: dict[str, np.ndarray], tolerance: float, threshold: float) -> list[Pair]:
    """The pairs with their pixel distance, the mean absolute difference of their reduced images (``small``:
    id -> :func:`small_grey` of the image), each confirmed when its cosine is at least ``threshold`` and
    its pixel distance at most ``tolerance``."""
    out = []
    for p in pairs:
        distance = float(np.abs(small[p.id] - small[p.nearest_id]).mean())
        out.append(replace(p, pixel_distance=distance, confirmed=p.cosine >= threshold and distance <= tolerance))
    return out


# -- the table and its summary ----------------------------------------------------------------------
FIELDS = ["split_pair", "id", "nearest_id", "cosine", "pixel_distance", "confirmed"]


def write_pairs(pairs: Iterable[Pair], path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FIELDS)
        for p in pairs:
            writer.writerow([p.split_pair, p.id, p.nearest_id, f"{p.cosine:.6f}", f"{p.pixel_distance:.3f}",
                             "true" if p.confirmed else "false"])


def read_pairs(path: str | Path) -> list[Pair]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run the leakage stage first (dvc repro)")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != FIELDS:
            raise PipelineError(f"{path} has the columns {reader.fieldnames}, expected {FIELDS}: "
                                "run the leakage stage again (dvc repro)")
        try:
            return [Pair(r["split_pair"], r["id"], r["nearest_id"], float(r["cosine"]), float(r["pixel_distance"]),
                         {"true": True, "false": False}[r["confirmed"]]) for r in reader]
        except (ValueError, KeyError) as err:
            raise PipelineError(f"{path} line {reader.line_num}: not a pair ({err}); "
                                "run the leakage stage again (dvc repro)") from None


def near_copies(pairs: Iterable[Pair], query: str = "test", bases: Sequence[str] = FITTED_ON) -> set[str]:
    """Ids of the ``query`` images with a confirmed near-copy in one of ``bases``."""
    wanted = {split_pair_name(query, b) for b in bases}
    return {p.id for p in pairs if p.confirmed and p.split_pair in wanted}


def summarise(pairs: Sequence[Pair], searched: dict[str, int], threshold: float, size: int,
              tolerance: float) -> dict:
    """Counts per split pair (``searched``: split pair -> query images searched): candidates, confirmed
    pairs, and the images of the query split in a confirmed pair; the headline numbers first."""
    per_pair = {}
    for name, n in searched.items():
        mine = [p for p in pairs if p.split_pair == name]
        confirmed = [p for p in mine if p.confirmed]
        within = name.split("-")[0] == name.split("-")[1]
        images = {p.id for p in confirmed} | ({p.nearest_id for p in confirmed} if within else set())
        per_pair[name] = {"searched": n, "candidates": len(mine), "confirmed": len(confirmed), "images": len(images)}
    return {
        "test_with_near_copy_in_train": len(near_copies(pairs, "test", ["train"])),
        "test_removed": len(near_copies(pairs)),
        "threshold": threshold,
        "pixel_size": size,
        "pixel_tolerance": tolerance,
        "pairs": per_pair,
    }


# -- the picture ----------------------------------------------------------------------------------
def plot_pairs(groups: Sequence[tuple[str, Sequence[Pair]]], images: dict[str, np.ndarray], path: str | Path,
               title: str, threshold: float) -> None:
    """Pairs side by side: for each group (a label and its pairs), a row of query images above a row of
    their nearest images, each pair captioned with its cosine and pixel distance; green: confirmed,
    orange: at or above the threshold but not confirmed by the pixels, grey: below the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(label, list(pairs)) for label, pairs in groups if pairs]
    columns = max((len(pairs) for _, pairs in groups), default=1)
    fig, axes = plt.subplots(max(1, 2 * len(groups)), columns, figsize=(1.3 * columns + 0.6, 2.9 * max(1, len(groups))),
                             squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for g, (label, pairs) in enumerate(groups):
        query, base = label.split("-", 1) if "-" in label else (label, "")
        for c, p in enumerate(pairs):
            colour = "tab:green" if p.confirmed else "tab:orange" if p.cosine >= threshold else "0.45"
            for r, key in enumerate((p.id, p.nearest_id)):
                ax = axes[2 * g + r, c]
                ax.imshow(images[key], interpolation="nearest")
                ax.set_axis_on()
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_edgecolor(colour)
                    spine.set_linewidth(2.5)
            axes[2 * g, c].set_title(f"cos {p.cosine:.3f}\npx {p.pixel_distance:.1f}", fontsize=7, color=colour)
        axes[2 * g, 0].set_ylabel(f"{label}\n{query}", fontsize=8)
        axes[2 * g + 1, 0].set_ylabel(base, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
