"""Leakage between splits: near-copies of one image in two splits, found on the cached pooled features,
confirmed on the pixels the way a person compares two pictures.

Web-gathered datasets often hold the same picture more than once, and rarely byte for byte: shifted by a
few pixels, cropped, rescaled, recoloured, re-encoded, mirrored. A test image whose copy is in the
training images measures memory, not generalisation. Three steps:

1. :func:`search`: for every image of a query split, its ``k`` nearest images of a base split by cosine
   similarity of the pooled features f(x) (:func:`pipeline.heads.neighbours.top_k_cosine`, exact and blockwise);
   and :func:`pixel_search`: its nearest by tiny grey thumbnails of the pixels (:func:`search_thumbnails`),
   upright or mirrored, which finds the copies the features rank lower (one of many copies of a photograph).
2. :func:`candidates`: every one of those neighbours (rank, not a cosine scale, decides), above a
   permissive cosine floor for the features; :func:`union` of both searches' candidates.
3. :func:`match`: the two images of each candidate, grey, brought to ``size`` x ``size`` pixels, are
   aligned over a grid of scales, shifts and the mirror, and compared by the cosine similarity of their
   gradient fields (which ignores brightness and contrast, and weighs edges, not plain backgrounds); a
   coarse pass at half the size drops the clearly different pairs first. At that best alignment a second
   measure, the ``detail``: the cosine of the gradient *directions* (each gradient scaled to about unit
   length, so faint structure such as clouds, water or the texture inside an object counts as much as
   the outline). Two different photographs of one outline on a plain background share their outline
   (a high match) but not their faint structure (a low detail). And the ``colour``: the cosine of the two
   images' chroma layouts at that alignment (:func:`_colour_at`), where both have colour. A pair is
   *confirmed* (:func:`confirm`) when its match and its detail both reach their thresholds (or its match is
   well above its threshold and its detail a little below), or when its colour reaches its own with a lower
   match and detail (a copy degraded by blur or re-encoding keeps its colours); where both images are on a
   plain background, only if what lies inside the outline agrees too, since two items of one cut share their
   outline: the ``interior`` (the detail over the inside of the object, its outline left out) and, in grey, the
   share of ``differing`` pixels after a fine alignment (:func:`_differing`); *possible*
   (:func:`possible`) when not confirmed but near it; ``mirrored`` when its best alignment is the mirror.

The pairs are a table (:func:`write_pairs` / :func:`read_pairs`, ``evaluation/leakage/pairs.csv``) that
the compare stage reads to score every head without the test images that have a confirmed near-copy in
the images heads are fitted on (:func:`near_copies`). Decoding the images is the data side's job (the
leakage stage); this module only sees features, ids and pixel arrays.
"""

from __future__ import annotations

import csv
import math
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from pipeline.core.config import LeakageParams
from pipeline.core.drawing import figure, save_png
from pipeline.core.errors import PipelineError
from pipeline.heads.neighbours import Neighbours, top_k_cosine

SPLIT_PAIRS: tuple[tuple[str, str], ...] = (("test", "train"), ("test", "val"), ("val", "train"), ("test", "test"))
"""(query split, base split) searched by the leakage stage: test and val against the images heads are
fitted on (train; val too, for the heads refit on train + val), and test against itself."""
FITTED_ON = ("train", "val")
"""The splits a head may be fitted on: a test image with a confirmed near-copy in one of them is left
out of the test figure "without near-copies"."""


def store_blocks(store, split: str, rows: int) -> Callable[[], Iterator[np.ndarray]]:
    """The features of ``split`` of a :class:`~pipeline.store.features.FeatureStore`, as blocks of ``rows``."""
    return lambda: (X for X, _ in store.iter_blocks(split, rows))


def search(store, k: int, block_rows: int, device=None) -> dict[tuple[str, str], Neighbours]:
    """The ``k`` nearest base images of every query image, for every split pair of :data:`SPLIT_PAIRS`
    that a :class:`~pipeline.store.features.FeatureStore` has images for (within one split, never itself), its
    features read in blocks of ``block_rows``."""
    sizes = {s: store.n_rows(s) for s in store.splits}
    found = {}
    for query, base in SPLIT_PAIRS:
        if sizes.get(query, 0) and sizes.get(base, 0) > (query == base):
            found[query, base] = top_k_cosine(store_blocks(store, query, block_rows),
                                              store_blocks(store, base, block_rows), k,
                                              exclude_self=query == base, block_rows=block_rows, device=device)
    return found


# -- pairs -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)  # slots: a third of the memory; the stage holds a few hundred thousand
class Pair:
    """A query image and one of its k nearest images in the base split: its ``rank`` there by the features (1: the
    nearest; 0: not among them, found by the pixel search) and their cosine similarity (NaN where rank is 0), its
    ``pixel_rank`` by the pixel search (0: not among its neighbours); the pixel check fills ``match`` (the cosine
    similarity of the gradient fields at the best alignment, -1 to 1), ``detail`` (the cosine of the gradient
    directions at that alignment, -1 to 1), ``mirrored`` (that alignment is the mirror image), ``colour``,
    ``confirmed`` (:func:`confirm`) and ``possible`` (not confirmed, but within ``leakage.possible_margin`` of the
    decision: :func:`possible`)."""

    split_pair: str
    """``<query split>-<base split>``: ``test-train``, ``test-val``, ``val-train``, ``test-test``."""
    id: str
    nearest_id: str
    rank: int
    cosine: float
    match: float = float("nan")
    detail: float = float("nan")
    mirrored: bool = False
    confirmed: bool = False
    colour: float = float("nan")
    """The cosine of the two images' colour layouts at that alignment; NaN where one of them has too
    little colour to say (:data:`CHROMA_FLOOR`)."""
    pixel_rank: int = 0
    possible: bool = False
    interior: float = float("nan")
    """The detail over the inside of the object alone, where both images are on a plain background; NaN elsewhere
    (:func:`_best_alignment`)."""
    differing: float = float("nan")
    """The share of pixels differing after the fine alignment, where both images are on a plain background, their
    colour is not measured and the pair could be confirmed or possible; NaN elsewhere (:func:`_differing`)."""

    @property
    def on_plain_background(self) -> bool:
        return not math.isnan(self.interior)


def split_pair_name(query: str, base: str) -> str:
    return f"{query}-{base}"


def candidates(query_ids: Sequence[str], base_ids: Sequence[str], found: Neighbours, split_pair: str,
               min_cosine: float = -1.0, pixels: bool = False) -> list[Pair]:
    """Every query image with each of its k nearest base images whose cosine is at least ``min_cosine``,
    by query then rank. Within one split (``test-test``) the pair of a and b is listed once, as (the
    smaller id, the larger id), at the better rank of the two searches that found it. ``pixels``: ``found``
    is the :func:`pixel_search`'s, its ranks go to ``pixel_rank`` (``rank`` 0, ``cosine`` NaN)."""
    within = split_pair.split("-")[0] == split_pair.split("-")[1]
    out: dict[tuple[str, str], Pair] = {}
    for i, q in enumerate(query_ids):
        for r in range(found.index.shape[1]):
            j, cosine = int(found.index[i, r]), float(found.similarity[i, r])
            if j < 0 or not cosine >= min_cosine:
                continue
            a, b = (min(q, base_ids[j]), max(q, base_ids[j])) if within else (q, base_ids[j])
            if (a, b) not in out or (out[a, b].pixel_rank if pixels else out[a, b].rank) > r + 1:
                out[a, b] = (Pair(split_pair, a, b, 0, float("nan"), pixel_rank=r + 1) if pixels
                             else Pair(split_pair, a, b, r + 1, cosine))
    return list(out.values())


def union(by_features: Iterable[Pair], by_pixels: Iterable[Pair]) -> list[Pair]:
    """The candidates of both searches, each pair once: a pair both found keeps the features' rank and
    cosine and gains its ``pixel_rank``; the features' pairs first, in their order."""
    out = {(p.split_pair, p.id, p.nearest_id): p for p in by_features}
    for p in by_pixels:
        key = (p.split_pair, p.id, p.nearest_id)
        out[key] = replace(out[key], pixel_rank=p.pixel_rank) if key in out else p
    return list(out.values())


# -- the pixel search ----------------------------------------------------------------------------------
SEARCH_SIDE = 6
"""The pixel search compares images as SEARCH_SIDE x SEARCH_SIDE grey thumbnails: coarse enough that
shifts, crops and rescaling within the families the check tolerates move a thumbnail's pixels by less
than one (on the planted benchmark, 6 put a copy's source first for 98.0% of the copies, 4, 8, 12 and 16
for 94.7% to 97.0%)."""
SEARCH_BLOCK = 1024
"""Rows per block of the pixel search: the similarities of a block with a block take 4 MiB (at 4,096 rows,
64 MiB: the stage's peak on CIFAR-10 about 40 MiB higher, and the search no faster)."""


def search_thumbnails(greys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, S, S) uint8 grey squares (:func:`grey_square`) -> their search thumbnails upright and mirrored,
    each (N, SEARCH_SIDE ** 2) float32: blurred (1.5 px at 32 px), area averages down to
    :data:`SEARCH_SIDE`, less their mean (the search's cosine then ignores brightness and contrast). In chunks of
    :data:`SEARCH_BLOCK` images (the blur's matrix products take 4 times their size: 16 MiB at a time)."""
    import torch
    import torch.nn.functional as F

    out = np.empty((2, len(greys), SEARCH_SIDE**2), np.float32)
    for start in range(0, len(greys), SEARCH_BLOCK):
        g = torch.from_numpy(np.ascontiguousarray(greys[start : start + SEARCH_BLOCK], np.float32))[:, None]
        for version, image in enumerate((g, g.flip(-1))):
            t = F.adaptive_avg_pool2d(_blur(image, 1.5 * g.shape[-1] / 32), SEARCH_SIDE).flatten(1)
            out[version, start : start + len(g)] = (t - t.mean(dim=1, keepdim=True)).numpy()
    return out[0], out[1]


def pixel_search(query: tuple[np.ndarray, np.ndarray], base: np.ndarray, k: int, within: bool,
                 device=None) -> Neighbours:
    """The ``k`` nearest ``base`` thumbnails (:func:`search_thumbnails`, upright) of each ``query`` (upright,
    mirrored) by cosine, the better of the query's two versions for each base image. ``within``: query and
    base are the same images, an image is never its own neighbour (nor its mirror's)."""
    found = [top_k_cosine(version, base, k, exclude_self=within, block_rows=SEARCH_BLOCK, device=device)
             for version in query]
    index = np.concatenate([f.index for f in found], axis=1)
    similarity = np.concatenate([f.similarity for f in found], axis=1)
    best_index, best = np.full((len(index), k), -1), np.full((len(index), k), -np.inf, np.float32)
    for i, (row, sims) in enumerate(zip(index, similarity)):
        kept: dict[int, float] = {}
        for j, s in sorted(zip(row.tolist(), sims.tolist()), key=lambda x: -x[1]):
            if j >= 0 and j not in kept:
                kept[j] = s
        for r, (j, s) in enumerate(list(kept.items())[:k]):
            best_index[i, r], best[i, r] = j, s
    return Neighbours(best_index, best)


# -- the pixel check -----------------------------------------------------------------------------
LUMA = np.array([0.299, 0.587, 0.114], np.float32)
"""ITU-R 601 luma weights: RGB to grey."""
SCALES = tuple(math.exp(0.06 * i) for i in range(-3, 4))
"""The scales the base image of a pair is tried at, 0.835 to 1.197 in steps of 6%: rescaled copies (0.9
to 1.1) and crops keeping 85% of each side (a zoom of up to 1.18), each also mirrored."""
COARSE_SCALES = SCALES[1::2]
"""The scales of the coarse pass: 0.887, 1 and 1.127."""
COARSE_BAR = 0.7
"""A pair scoring below this in the coarse pass (both images at half the size, :data:`COARSE_SCALES`) is
rejected without the full-size check: planted copies of every family score 0.77 or more there."""
DETAIL_FLOOR = 2.0
"""The gradients of the ``detail`` measure are scaled to g / (|g| + DETAIL_FLOOR) (grey levels per pixel,
after the blur): about unit length where the image has structure, faint structure counting nearly in
full, flat pixels (|g| well below the floor) hardly at all."""
CHROMA_FLOOR = 4.0
"""Colour counts in the decision only where both images have at least this much of it: the root mean square
of their chroma, less its mean, over the compared window, in grey levels (a grey picture has 0; CIFAR-10's
median is 16)."""
STRONG_MATCH, DETAIL_GIVEN = 0.1, 0.05
"""The grey rule's second point: a match this far above ``leakage.threshold`` also confirms with a detail this far
below ``leakage.min_detail`` (0.9 and 0.7 at the defaults): JPEG re-encoding and blur on top of a move or a
recolouring take faint structure first, while the outline still lines up almost exactly (on the planted benchmark
it confirmed one more combined copy and no hard negative; on CIFAR-10, 10 of the 12 pairs it adds are the same
photograph by eye)."""
COLOUR_MATCH, COLOUR_DETAIL = 0.7, 0.6
"""Where both images have colour and their colour layouts agree (``leakage.min_colour``), a pair is also
confirmed down to this match and this detail: a copy degraded by blur or re-encoding loses fine structure
before its colour layout, which two photographs of one outline seldom share."""
PLAIN_LEVELS = 12.0
"""Grey levels within which a pixel counts as an image's background: the median of its outer ring two pixels wide
(after the blur)."""
PLAIN_SHARE = 0.6
"""An image is on a plain background when at least this share of its outer ring is background (:func:`_plain`)."""
MOSTLY_PLAIN = 0.5
"""When at least this share of the checked pairs is on a plain background (``checked_on_plain_background``), the
stage and the report say that the near-copy figures are bounds there (:func:`plain_background_note`): on
Fashion-MNIST's planted benchmark 3.8% to 9.2% of the different items of one cut still pass for copies
(docs/leakage.md)."""
MIN_INSIDE = 0.05
"""The ``interior`` is measured where the inside of the object covers at least this share of the compared window."""
DIFFER_LEVEL, MAX_DIFFERING = 0.12, 0.005
"""A grey pair on a plain background is confirmed only if, after the fine alignment (:func:`_differing`), at most this
share of its compared pixels differ by more than this share of the object's contrast: about 3 pixels of a 32-pixel
check (a re-encoded copy's noise stays below the level; a different item of one cut differs at its collar, its
straps, the gap between its legs)."""
DIFFERING_SCALE = 4.0
"""In the margin (:func:`decision_margin`), a share of differing pixels counts this many times as a cosine: the band of
possible near-copies (``leakage.possible_margin``, 0.2) reaches 5.5% of the pixels differing, where on the planted
Fashion-MNIST benchmark most copies it misses lie."""
FINE_SIGMA, FINE_STEPS, FINE_RATE, FINE_EDGE = 1.0, 80, 0.06, 3.0
"""The fine alignment: both images blurred by a Gaussian of this sigma (pixels at 32), this many Adam steps of this
rate on the shift and the scale of each axis, and the pixels whose base position lies within this many pixels (at
32) of the base image's edge left out (what a shifted copy brought in from beyond its frame)."""
CHUNK = 256
"""Pairs aligned at once (memory: about 0.2 MiB per pair at 32 pixels)."""


def _area_square(planes: np.ndarray, size: int) -> np.ndarray:
    """(C, H, W) float32 -> (C, size, size) uint8: the mean over areas (adaptive average pooling) down to
    ``size``, bilinear up to it first where smaller (the aspect ratio is not kept)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(planes, np.float32))[None]
    if t.shape[-2:] != (size, size):
        if min(t.shape[-2:]) < size:
            t = F.interpolate(t, (max(size, t.shape[-2]), max(size, t.shape[-1])), mode="bilinear", align_corners=False)
        t = F.adaptive_avg_pool2d(t, size)
    return np.clip(np.rint(t[0].numpy()), 0, 255).astype(np.uint8)


def grey_square(image: np.ndarray, size: int) -> np.ndarray:
    """An image (H, W, 3) RGB or (H, W) grey, uint8 -> (size, size) uint8 grey levels: luma, then
    :func:`_area_square`."""
    image = np.asarray(image)
    grey = image.astype(np.float32) @ LUMA if image.ndim == 3 else image.astype(np.float32)
    return _area_square(grey[None], size)[0]


def colour_square(image: np.ndarray, size: int) -> np.ndarray:
    """An image (H, W, 3) RGB or (H, W) grey, uint8 -> (3, size, size) uint8 RGB (:func:`_area_square`), for
    the colour measure, at half the grey size of the alignment."""
    image = np.asarray(image)
    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
    return _area_square(rgb.transpose(2, 0, 1), size)


def _chroma(rgb):
    """(N, 3, S, S) RGB -> (N, 2, S, S) opponent chroma: red - green, (red + green) / 2 - blue."""
    import torch

    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    return torch.stack([r - g, (r + g) / 2 - b], 1)


def _blur(x, sigma: float):
    """Gaussian blur of (N, 1, S, S), edges replicated: K x K^T with K the (S, S) blur matrix (cheaper
    than a convolution on images this small)."""
    import torch

    size, r = x.shape[-1], max(1, math.ceil(2.5 * sigma))
    weights = torch.exp(-torch.arange(-r, r + 1.0) ** 2 / (2 * sigma**2))
    weights = weights / weights.sum()
    k = torch.zeros(size, size)
    for offset, w in zip(range(-r, r + 1), weights):
        k[torch.arange(size), (torch.arange(size) + offset).clamp(0, size - 1)] += w  # beyond the edge: the edge
    return k @ x @ k.T


def _gradients(x):
    """(N, 1, H, W) -> (N, 2, H - 2, W - 2): central differences along x and y."""
    import torch

    return torch.cat([x[..., 1:-1, 2:] - x[..., 1:-1, :-2], x[..., 2:, 1:-1] - x[..., :-2, 1:-1]], 1)


def _versions(bases, reach: int, scales: Sequence[float]):
    """(P, 1, S, S) -> (P * V, 1, S + 2 reach, S + 2 reach): each base image at every one of ``scales``
    about its centre, upright then mirrored (V = 2 x scales), on a canvas ``reach`` pixels wider on each
    side (edges replicated beyond the image)."""
    import torch
    import torch.nn.functional as F

    P, size = len(bases), bases.shape[-1]
    canvas = size + 2 * reach
    wider = canvas / size
    theta = torch.tensor([[[flip * wider / s, 0.0, 0.0], [0.0, wider / s, 0.0]]
                          for flip in (1.0, -1.0) for s in scales])
    grid = F.affine_grid(theta, [len(theta), 1, canvas, canvas], align_corners=False)
    return F.grid_sample(bases.repeat_interleave(len(theta), 0), grid.repeat(P, 1, 1, 1), mode="bilinear",
                         padding_mode="border", align_corners=False)


def _box_sums(x, w: int):
    """Sums of ``x`` (..., H, W) over every w x w window (integral image): (..., H - w + 1, W - w + 1)."""
    import torch.nn.functional as F

    c = F.pad(x, (1, 0, 1, 0)).cumsum(-1).cumsum(-2)
    return c[..., w:, w:] - c[..., :-w, w:] - c[..., w:, :-w] + c[..., :-w, :-w]


def _plain(images):
    """(P, 1, S, S) grey -> (the background level (P,): the median of the outer ring two pixels wide, whether the
    image is on a plain background (P,): at least :data:`PLAIN_SHARE` of that ring within :data:`PLAIN_LEVELS`
    of it)."""
    import torch

    x = images[:, 0]
    ring = torch.cat([x[:, :2].flatten(1), x[:, -2:].flatten(1), x[:, 2:-2, :2].flatten(1), x[:, 2:-2, -2:].flatten(1)],
                     1)
    level = ring.median(dim=1).values
    return level, ((ring - level[:, None]).abs() <= PLAIN_LEVELS).float().mean(1) >= PLAIN_SHARE


def _cosines(a, b):
    """Row-wise cosine similarity of (P, ...) and (P, ...): (P,)."""
    norms = a.flatten(1).norm(dim=1) * b.flatten(1).norm(dim=1)
    return (a * b).flatten(1).sum(1) / norms.clamp_min(1e-6)


def _reach_margin(size: int) -> tuple[int, int]:
    """The alignment's geometry at ``size`` pixels: the farthest shift tried (15% of the side) and the query's
    border left out of the compared window (a tenth of the side)."""
    return math.ceil(0.15 * size), max(1, size // 10)


def _best_alignment(queries, bases, scales: Sequence[float] = SCALES, inside: bool = True):
    """The cosine similarity of the gradient fields of each query (P, 1, S, S) and its base at their best
    alignment: the base at each of ``scales``, upright and mirrored, at every shift of up to 15% of the
    side, against the query's central window (all but a tenth of the side at each edge). The products of
    all shifts at once by FFT, the base windows' norms by an integral image. Returns (score (P,), the best
    version (P,): its scale, mirrored from ``len(scales)`` on, the shift (P, 2) of the base in pixels, the
    detail (P,) there, and the interior (P,): the detail over the inside of the object alone, where both images
    are on a plain background (:func:`_plain`): the pixels off both backgrounds, less two pixels at their edge;
    NaN elsewhere, or where that inside covers less than :data:`MIN_INSIDE` of the window; None with ``inside``
    False)."""
    import torch
    import torch.nn.functional as F

    P, size = len(queries), queries.shape[-1]
    (reach, margin), sigma = _reach_margin(size), 0.35 + 0.35 * size / 32
    blurred_queries, blurred_bases = _blur(queries, sigma), _blur(bases, sigma)
    q = _gradients(blurred_queries)
    window = q.shape[-1] - 2 * margin
    q = q[..., margin : margin + window, margin : margin + window]  # (P, 2, w, w)
    side = window + 2 * reach
    versions = _versions(blurred_bases, reach, scales)
    g = _gradients(versions)
    g = g[..., margin : margin + side, margin : margin + side]
    g = g.reshape(P, -1, 2, side, side)  # (P, V, 2, w + 2r, w + 2r)
    spectra = torch.fft.rfft2(g) * torch.fft.rfft2(q, s=(side, side)).conj()[:, None]
    dots = torch.fft.irfft2(spectra.sum(2), s=(side, side))[..., : 2 * reach + 1, : 2 * reach + 1]
    norms = _box_sums(g.square().sum(2), window).clamp_min(1e-12).sqrt()
    cos = dots / (norms * q.flatten(1).norm(dim=1).clamp_min(1e-6)[:, None, None, None])
    best, where = cos.flatten(1).max(dim=1)
    shifts = 2 * reach + 1
    version, dy, dx = where // shifts**2, where % shifts**2 // shifts, where % shifts
    pairs, offsets = torch.arange(P), torch.arange(window)
    rows, columns = (dy[:, None] + offsets)[:, None, :, None], (dx[:, None] + offsets)[:, None, None, :]
    aligned = g[pairs, version][pairs[:, None, None, None], torch.arange(2)[None, :, None, None], rows, columns]
    q, aligned = (x / (x.norm(dim=1, keepdim=True) + DETAIL_FLOOR) for x in (q, aligned))
    detail, shift = _cosines(q, aligned), torch.stack([dy, dx], 1) - reach
    if not inside:
        return best, version, shift, detail, None
    # the interior: the grey levels under the compared gradients (a gradient at (r, c) is the pixel's at r + 1, c + 1)
    (query_level, query_plain), (base_level, base_plain) = _plain(blurred_queries), _plain(blurred_bases)
    inner = slice(1 + margin, 1 + margin + window)
    grey_q = blurred_queries[:, 0, inner, inner]
    canvas = versions.shape[-1]
    grey_b = versions.reshape(P, -1, canvas, canvas)[pairs, version][pairs[:, None, None], rows[:, 0] + margin + 1,
                                                                columns[:, 0] + margin + 1]
    off = ((grey_q - query_level[:, None, None]).abs() > PLAIN_LEVELS) & (
        (grey_b - base_level[:, None, None]).abs() > PLAIN_LEVELS)
    within = -F.max_pool2d(-off[:, None].float(), 5, 1, 2)  # (P, 1, w, w): less two pixels at the edge
    measured = query_plain & base_plain & (within.flatten(1).mean(1) >= MIN_INSIDE)
    interior = torch.where(measured, _cosines(q * within, aligned * within), torch.tensor(float("nan")))
    return best, version, shift, detail, interior


def _differing(queries, bases, version, shift, scales: Sequence[float] = SCALES):
    """The share of differing pixels of each query (P, 1, S, S) and its base after a fine alignment: from the grid's
    best version and shift (:func:`_best_alignment`), the shift and the scale along each axis (a crop keeps 85% of
    each side, not of both) refined by gradient descent on the squared difference of the two blurred images, the base's
    grey levels fitted to the query's by a line (brightness and contrast) at each step. Then the share of the query's
    central window (the base's edge left out: :data:`FINE_EDGE`) where they differ by more than :data:`DIFFER_LEVEL`
    of the query's contrast (the 90th percentile of its object's distance to its background level, :func:`_plain`);
    NaN without such pixels. A copy differs by its re-encoding noise; a different item of one cut where its shape or
    its print differs."""
    import torch
    import torch.nn.functional as F

    size = queries.shape[-1]
    reach, margin = _reach_margin(size)
    window, canvas = size - 2 - 2 * margin, size + 2 * reach  # the pixels under the grid's compared gradients
    q, b = _blur(queries, FINE_SIGMA * size / 32), _blur(bases, FINE_SIGMA * size / 32)
    level = _plain(q)[0]
    q = q[:, 0, 1 + margin : 1 + margin + window, 1 + margin : 1 + margin + window]
    start = torch.log(torch.tensor(scales)[version % len(scales)])[:, None].repeat(1, 2)  # (P, 2): y, x
    flip = torch.where(version >= len(scales), -1.0, 1.0)[:, None]
    pixels = torch.arange(window, dtype=torch.float32) + 1 + margin
    log_scale, moved = start.clone().requires_grad_(True), shift.float().clone().requires_grad_(True)

    def sampled():  # the base at the query's window pixels (normalised coordinates, as in :func:`_versions`)
        y, x = (((2 * (pixels + moved[:, i : i + 1] + reach) + 1) / canvas - 1) * canvas / size
                / log_scale[:, i : i + 1].exp() for i in (0, 1))
        grid = torch.stack([(flip * x)[:, None, :].expand(-1, window, -1), y[:, :, None].expand(-1, -1, window)], -1)
        return F.grid_sample(b, grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0], grid

    def residual(base):
        b0, q0 = base - base.mean((1, 2), keepdim=True), q - q.mean((1, 2), keepdim=True)
        slope = (b0 * q0).sum((1, 2), keepdim=True) / b0.square().sum((1, 2), keepdim=True).clamp_min(1e-6)
        return q0 - slope * b0

    params = (log_scale, moved)
    moments = [(torch.zeros_like(x), torch.zeros_like(x)) for x in params]
    with torch.enable_grad():
        for step in range(1, FINE_STEPS + 1):  # Adam, written out: torch.optim imports torch._dynamo (+150 MiB)
            grads = torch.autograd.grad(residual(sampled()[0]).square().mean((1, 2)).sum(), params)  # pairs apart
            with torch.no_grad():
                for x, g, (m, v) in zip(params, grads, moments):
                    m.mul_(0.9).add_(g, alpha=0.1)
                    v.mul_(0.999).addcmul_(g, g, value=0.001)
                    x -= FINE_RATE * (m / (1 - 0.9**step)) / ((v / (1 - 0.999**step)).sqrt() + 1e-8)
                log_scale.copy_(torch.minimum(torch.maximum(log_scale, start - 0.1), start + 0.1))  # near the grid's
    with torch.no_grad():
        base, grid = sampled()
        inside = (grid.abs() <= 1 - FINE_EDGE / 16).all(-1)  # FINE_EDGE pixels at 32, as the blur
        away = (q - level[:, None, None]).abs().flatten(1)
        contrast = torch.where(away > PLAIN_LEVELS, away, torch.nan).nanquantile(0.9, dim=1).clamp_min(1.0)
        differs = (residual(base).abs() > DIFFER_LEVEL * contrast[:, None, None]) & inside
        share = differs.flatten(1).sum(1) / inside.flatten(1).sum(1)
        return torch.where(inside.flatten(1).any(1) & ~contrast.isnan(), share, torch.nan)


def _colour_at(queries, bases, version, shift, size: int, scales: Sequence[float] = SCALES):
    """The cosine of the colour layouts of each query (P, 3, C, C) and its base, the base taken at the version
    and shift the grey alignment at ``size`` pixels chose (shifts halved at half the size): each image's chroma
    (:func:`_chroma`), blurred, less its mean over the query's central window; NaN where either has less than
    :data:`CHROMA_FLOOR` there. Chroma ignores brightness; the cosine ignores saturation (a scale); a hue
    shift turns the chroma plane (0.05 of the hue circle: a cosine of 0.95)."""
    import torch

    P, c = len(queries), queries.shape[-1]
    scale = c / size
    reach, margin, sigma = math.ceil(0.15 * size * scale) + 1, max(1, round(size // 10 * scale)), 0.35 + 0.35 * c / 32
    q = _chroma(_blur(queries, sigma))
    versions = _versions(_chroma(_blur(bases, sigma)).reshape(P * 2, 1, c, c), reach, scales)
    canvas = versions.shape[-1]
    b = versions.reshape(P, 2, 2 * len(scales), canvas, canvas)[torch.arange(P), :, version]  # (P, 2, canvas, canvas)
    window = c - 2 * margin
    offset = torch.round(shift * scale).long() + reach + margin  # (P, 2): where the window starts in the canvas
    span = torch.arange(window)
    rows, columns = (offset[:, 0, None] + span)[:, None, :, None], (offset[:, 1, None] + span)[:, None, None, :]
    b = b[torch.arange(P)[:, None, None, None], torch.arange(2)[None, :, None, None], rows, columns]
    q = q[..., margin : margin + window, margin : margin + window]
    q, b = (x - x.mean(dim=(2, 3), keepdim=True) for x in (q, b))
    q_norm, b_norm = q.flatten(1).norm(dim=1), b.flatten(1).norm(dim=1)
    energy = torch.minimum(q_norm, b_norm) / window
    cos = (q * b).flatten(1).sum(1) / (q_norm * b_norm).clamp_min(1e-6)
    return torch.where(energy >= CHROMA_FLOOR, cos, torch.tensor(float("nan")))


def match(queries: np.ndarray, bases: np.ndarray, query_colours: np.ndarray | None = None,
          base_colours: np.ndarray | None = None, lk: LeakageParams | None = None) -> tuple[np.ndarray, ...]:
    """Pairs of grey images ``queries[i]``, ``bases[i]`` (P, S, S) uint8 (:func:`grey_square`): the
    cosine similarity of their gradient fields at their best alignment (scales, shifts, mirror), whether
    that alignment is the mirror, the ``detail`` there (:func:`_best_alignment`), given their
    :func:`colour_square` (P, 3, S/2, S/2), the ``colour`` there (:func:`_colour_at`; NaN without), and where both
    images are on a plain background, the ``interior`` and, where their colour is not measured, the share of
    ``differing`` pixels after the fine alignment (:func:`_differing`; a grey level does not follow a hue shift); NaN
    elsewhere. Given ``lk``, only where they could make the pair confirmed or possible (the fine alignment is the
    check's dearest step; the other measures put most pairs beyond reach).
    The pairs whose coarse score (both images halved, the scales of :data:`COARSE_SCALES`) is below :data:`COARSE_BAR`
    are not aligned at full size: their score and detail are NaN. Runs on one thread: these operations
    are too small to gain from more (on 2 busy cores, 2 threads took twice as long)."""
    import torch
    import torch.nn.functional as F

    scores, mirrored = np.full(len(queries), np.nan, np.float32), np.zeros(len(queries), bool)
    details, colours = np.full(len(queries), np.nan, np.float32), np.full(len(queries), np.nan, np.float32)
    interiors, differing = np.full(len(queries), np.nan, np.float32), np.full(len(queries), np.nan, np.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for start in range(0, len(queries), CHUNK):
            q = torch.from_numpy(np.ascontiguousarray(queries[start : start + CHUNK], np.float32))[:, None]
            b = torch.from_numpy(np.ascontiguousarray(bases[start : start + CHUNK], np.float32))[:, None]
            coarse = _best_alignment(F.avg_pool2d(q, 2), F.avg_pool2d(b, 2), COARSE_SCALES, inside=False)[0]
            keep = torch.nonzero(coarse >= COARSE_BAR)[:, 0]
            if len(keep):
                best, version, shift, detail, interior = _best_alignment(q[keep], b[keep])
                at = start + keep.numpy()
                scores[at], mirrored[at], details[at] = best.numpy(), (version >= len(SCALES)).numpy(), detail.numpy()
                interiors[at] = interior.numpy()
                if query_colours is not None:
                    qc, bc = (torch.from_numpy(np.ascontiguousarray(x[at], np.float32))
                              for x in (query_colours, base_colours))
                    colours[at] = _colour_at(qc, bc, version, shift, queries.shape[-1]).numpy()
                grey = ~np.isnan(interiors[at]) & np.isnan(colours[at])
                if lk is not None:  # at best no pixel differs
                    grey &= decision_margin(scores[at], details[at], colours[at], lk, interiors[at], 0.0) >= (
                        -lk.possible_margin)
                if grey.any():
                    fine = torch.from_numpy(grey)
                    differing[at[grey]] = _differing(q[keep[fine]], b[keep[fine]], version[fine], shift[fine]).numpy()
    finally:
        torch.set_num_threads(threads)
    return scores, mirrored, details, colours, interiors, differing


def strong_point(lk: LeakageParams) -> tuple[float, float]:
    """The grey rule's second point: (match, detail) at which it also confirms (:data:`STRONG_MATCH`)."""
    return round(lk.threshold + STRONG_MATCH, 6), round(lk.min_detail - DETAIL_GIVEN, 6)


def decision_margin(score, detail, colour, lk: LeakageParams, interior=float("nan"), differing=float("nan")):
    """How far a pair's measures are from the decision, on numbers or arrays (cosines; at least 0: confirmed, see
    :func:`confirm`): of its rules the nearest to confirming it, each by the smallest of its measures' distances to
    their thresholds. The rules: a match of at least ``lk.threshold`` and a detail of at least ``lk.min_detail``, or
    a match :data:`STRONG_MATCH` higher with a detail :data:`DETAIL_GIVEN` lower (the grey rule); or, where both
    images have colour (``colour`` not NaN) and ``lk.min_colour`` is set, a colour of at least ``lk.min_colour``
    with a match of at least :data:`COLOUR_MATCH` and a detail of at least :data:`COLOUR_DETAIL`. And, where both
    images are on a plain background, no nearer than the evidence inside the outline, which must agree too (two
    items of one cut share their outline): where their colour is measured (``differing`` NaN), an ``interior`` of at
    least ``lk.min_detail``, or a colour of at least ``lk.min_colour`` with an interior of at least
    :data:`COLOUR_DETAIL` (a copy whose inside lost its faint structure to blur keeps its colours); in grey, at most
    :data:`MAX_DIFFERING` of the pixels differing after the fine alignment (counted :data:`DIFFERING_SCALE` times in
    the margin) with an interior down to the grey rule's second point (0.7 at the defaults): the pixels see a shape
    or a shade, the interior a print or a seam (a ``differing`` is read only with its ``interior``, as :func:`match`
    gives them; with ``lk.min_detail`` -1 neither counts). A NaN colour term drops out (``np.fmax``); a NaN match or
    detail gives NaN (never confirmed)."""
    strong_match, lower_detail = strong_point(lk)
    rules = np.maximum(np.minimum(score - lk.threshold, detail - lk.min_detail),
                       np.minimum(score - strong_match, detail - lower_detail))
    inside = interior - lk.min_detail
    if lk.min_colour is not None:
        rules = np.fmax(rules, np.minimum(np.minimum(score - COLOUR_MATCH, detail - COLOUR_DETAIL),
                                          colour - lk.min_colour))
        inside = np.fmax(inside, np.minimum(colour - lk.min_colour, interior - COLOUR_DETAIL))
    if lk.min_detail > -1:  # -1: the match alone decides
        grey = np.minimum(DIFFERING_SCALE * (MAX_DIFFERING - differing), interior - lower_detail)
        inside = np.where(np.isnan(differing), inside, grey)
    return np.where(np.isnan(inside), rules, np.minimum(rules, inside))


def confirm(score, detail, colour, lk: LeakageParams, interior=float("nan"), differing=float("nan")):
    """The decision, on numbers or arrays: a :func:`decision_margin` of at least 0."""
    return decision_margin(score, detail, colour, lk, interior, differing) >= 0


def margin(p: Pair, lk: LeakageParams) -> float:
    """How far a checked pair is from the decision (:func:`decision_margin` of its measures); at least 0:
    confirmed."""
    return float(decision_margin(p.match, p.detail, p.colour, lk, p.interior, p.differing))


def possible(p: Pair, lk: LeakageParams) -> bool:
    """Whether a checked pair is a *possible* near-copy: not confirmed, but its :func:`margin` within
    ``lk.possible_margin`` of the decision (where, at 32 px, copies and look-alikes overlap)."""
    return not p.confirmed and lk.possible_margin > 0 and margin(p, lk) >= -lk.possible_margin


def check_pairs(pairs: Sequence[Pair], grey: dict[str, np.ndarray], colour: dict[str, np.ndarray] | None,
                lk: LeakageParams) -> list[Pair]:
    """The pairs that pass the coarse pass of :func:`match` (``grey``: id -> :func:`grey_square` of the
    image; ``colour``: id -> :func:`colour_square`, or None), with their ``match``, ``detail``, ``mirrored``
    and ``colour``, each confirmed or not by :func:`confirm` with ``lk``'s thresholds, or :func:`possible`."""
    out = []
    for start in range(0, len(pairs), 16 * CHUNK):  # the stacked images of a few chunks at a time
        some = pairs[start : start + 16 * CHUNK]
        coloured = {} if colour is None else {
            "query_colours": np.stack([colour[p.id] for p in some]), "base_colours": np.stack([colour[p.nearest_id] for p in some])}
        measures = match(np.stack([grey[p.id] for p in some]), np.stack([grey[p.nearest_id] for p in some]), **coloured,
                         lk=lk)
        checked = [replace(p, match=float(s), detail=float(d), mirrored=bool(m), colour=float(c), interior=float(i),
                           differing=float(x), confirmed=bool(confirm(s, d, c, lk, i, x)))
                   for p, s, m, d, c, i, x in zip(some, *measures) if not np.isnan(s)]
        out += [replace(p, possible=True) if possible(p, lk) else p for p in checked]
    return out


# -- the table and its summary ----------------------------------------------------------------------
FIELDS = ["split_pair", "id", "nearest_id", "rank", "cosine", "match", "detail", "mirrored", "confirmed", "colour",
          "pixel_rank", "possible", "interior", "differing"]
_BOOL = {"true": True, "false": False}


def write_pairs(pairs: Iterable[Pair], path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FIELDS)
        for p in pairs:
            cosine = "" if math.isnan(p.cosine) else f"{p.cosine:.6f}"
            writer.writerow([p.split_pair, p.id, p.nearest_id, p.rank, cosine, f"{p.match:.4f}", f"{p.detail:.4f}",
                             str(p.mirrored).lower(), str(p.confirmed).lower(),
                             "" if math.isnan(p.colour) else f"{p.colour:.4f}", p.pixel_rank, str(p.possible).lower(),
                             "" if math.isnan(p.interior) else f"{p.interior:.4f}",
                             "" if math.isnan(p.differing) else f"{p.differing:.6f}"])


def read_pairs(path: str | Path, flagged_only: bool = False) -> list[Pair]:
    """The pairs of a pairs.csv (:func:`write_pairs`); ``flagged_only``: only the confirmed and the possible ones
    (what compare needs, from a table of tens of thousands of rows on a complete dataset, on every head swap)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run the leakage stage first (dvc repro)")
    with open(path, newline="") as f:
        rows = csv.reader(f)  # csv.DictReader: twice as slow
        header = next(rows, None)
        if header != FIELDS:
            raise PipelineError(f"{path} has the columns {header}, expected {FIELDS}: "
                                "run the leakage stage again (dvc repro)")
        confirmed, maybe = FIELDS.index("confirmed"), FIELDS.index("possible")
        try:
            return [Pair(sp, a, b, int(rank), float(cosine or "nan"), float(m), float(d), _BOOL[mirrored],
                         _BOOL[ok], float(colour or "nan"), int(pixel_rank), _BOOL[flag], float(inside or "nan"),
                         float(differs or "nan"))
                    for sp, a, b, rank, cosine, m, d, mirrored, ok, colour, pixel_rank, flag, inside, differs in (
                        r for r in rows if not flagged_only or "true" in (r[confirmed], r[maybe]))]
        except (ValueError, KeyError) as err:
            raise PipelineError(f"{path} line {rows.line_num}: not a pair ({err}); "
                                "run the leakage stage again (dvc repro)") from None


def near_copies(pairs: Iterable[Pair], query: str = "test", bases: Sequence[str] = FITTED_ON,
                possible: bool = False) -> set[str]:
    """Ids of the ``query`` images with a confirmed near-copy in one of ``bases`` (``possible``: or a possible one)."""
    wanted = {split_pair_name(query, b) for b in bases}
    return {p.id for p in pairs if (p.confirmed or possible and p.possible) and p.split_pair in wanted}


def summarise(pairs: Sequence[Pair], searched: dict[str, tuple[int, int]], settings: dict) -> dict:
    """Counts per split pair (``searched``: split pair -> (query images searched, candidate pairs)): the candidates, the
    pairs ``checked`` at full size (listed in the table), the ``confirmed`` ones, of which ``mirrored`` and those
    only the pixel search found, the images of the query split in a confirmed pair, the ``possible`` pairs and those
    ``on_plain_background`` (their interior measured); the headline numbers first
    (``test_possible``: the test images with a possible near-copy in train or val and no confirmed one;
    ``checked_on_plain_background``: the share of all checked pairs on a plain background, where two items of one cut
    can pass for copies), then ``settings`` (the params)."""
    per_pair = {}
    for name, (n, listed) in searched.items():
        mine = [p for p in pairs if p.split_pair == name]
        confirmed = [p for p in mine if p.confirmed]
        within = name.split("-")[0] == name.split("-")[1]
        images = {p.id for p in confirmed} | ({p.nearest_id for p in confirmed} if within else set())
        per_pair[name] = {"searched": n, "candidates": listed, "checked": len(mine), "confirmed": len(confirmed),
                          "mirrored": sum(p.mirrored for p in confirmed), "images": len(images),
                          "confirmed_by_pixel_search_only": sum(p.rank == 0 for p in confirmed),
                          "possible": sum(p.possible for p in mine),
                          "on_plain_background": sum(p.on_plain_background for p in mine)}
    removed = near_copies(pairs)
    plain = sum(counts["on_plain_background"] for counts in per_pair.values())
    return {
        "test_with_near_copy_in_train": len(near_copies(pairs, "test", ["train"])),
        "test_removed": len(removed),
        "test_possible": len(near_copies(pairs, possible=True) - removed),
        "checked_on_plain_background": round(plain / max(1, sum(c["checked"] for c in per_pair.values())), 3),
        **settings,
        "pairs": per_pair,
    }


def plain_background_note(summary: dict) -> str | None:
    """What the stage's log and the report say when at least :data:`MOSTLY_PLAIN` of the checked pairs of a
    :func:`summarise` are on a plain background; None otherwise (or for a summary without the share)."""
    share = summary.get("checked_on_plain_background", 0)
    if share < MOSTLY_PLAIN:
        return None
    return (f"{share:.0%} of the pairs checked are on a plain background, where two items of one cut can pass for "
            "copies: read the figures without near-copies as bounds (docs/leakage.md)")


# -- the picture ----------------------------------------------------------------------------------
COLUMNS = 12
"""Pairs per row of the picture."""


def plot_pairs(groups: Sequence[tuple[str, Sequence[Pair]]], images: dict[str, np.ndarray], path: str | Path,
               title: str) -> None:
    """Pairs side by side: for each group (a label and its pairs), rows of query images above rows of their candidate
    images, :data:`COLUMNS` pairs a row, each pair captioned with its split pair, the candidate's rank and cosine
    (``pixels #r``: found by the pixel search alone), its match (``M``: mirrored), detail and colour (``-``: too
    little colour); green: confirmed, blue: possible, orange: rejected."""
    rows = [(label, list(pairs[i : i + COLUMNS])) for label, pairs in groups if pairs
            for i in range(0, len(pairs), COLUMNS)]
    columns = max((len(pairs) for _, pairs in rows), default=1)
    width = 1.25 * columns + 0.8  # inches; a 9-point line holds about 13 characters an inch
    wrapped = "\n".join(textwrap.fill(line, int(width * 13)) for line in title.split("\n"))  # few columns: narrow
    fig = figure(figsize=(width, 2.95 * max(1, len(rows)) + 0.15 * max(0, wrapped.count("\n") - 2)))
    axes = fig.subplots(max(1, 2 * len(rows)), columns, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for g, (label, pairs) in enumerate(rows):
        for c, p in enumerate(pairs):
            colour = "tab:green" if p.confirmed else "tab:blue" if p.possible else "tab:orange"
            for r, key in enumerate((p.id, p.nearest_id)):
                ax = axes[2 * g + r, c]
                ax.imshow(images[key], interpolation="nearest")
                ax.set_axis_on()
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_edgecolor(colour)
                    spine.set_linewidth(2.5)
            found = f"#{p.rank} cos {p.cosine:.2f}" if p.rank else f"pixels #{p.pixel_rank}"
            axes[2 * g, c].set_title(f"{p.split_pair} {found}\nmatch {p.match:.3f}"
                                     f"{' M' if p.mirrored else ''}\ndetail {p.detail:.3f}"
                                     f"\ncolour {'-' if math.isnan(p.colour) else f'{p.colour:.3f}'}"
                                     f"{'' if math.isnan(p.interior) else f', inside {p.interior:.3f}'}"
                                     + ("" if math.isnan(p.differing) else f"\ndiffer {p.differing:.2%}"), fontsize=6.5,
                                     color=colour)
        axes[2 * g, 0].set_ylabel(label, fontsize=8)
    fig.suptitle(wrapped, fontsize=9)
    fig.tight_layout()
    save_png(fig, path)
