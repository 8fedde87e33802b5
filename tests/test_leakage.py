"""Leakage between splits: the blockwise nearest-neighbour search against brute force, the pixel check, the
stage on a small real dataset with planted near-copies (real EfficientNet-Lite0 features), and compare's
test figure without them."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import parse_params
from pipeline.errors import ConfigError, PipelineError
from pipeline.leakage import (Nearest, Pair, candidates, check_pixels, near_copies, nearest_neighbours, pairs_of,
                              pixel_distance, read_pairs, small_grey, summarise, write_pairs)
from tests.conftest import write_cifar_folder


def brute_force(queries: np.ndarray, base: np.ndarray, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The whole similarity matrix in float64; the first maximum of each row."""
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    b = base / np.maximum(np.linalg.norm(base, axis=1, keepdims=True), 1e-12)
    sims = q.astype(np.float64) @ b.astype(np.float64).T
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    return sims.argmax(axis=1), sims.max(axis=1)


def in_blocks(array: np.ndarray, sizes: list[int]):
    """A re-readable stream of ``array`` in blocks of uneven sizes (cycling through ``sizes``)."""
    def blocks():
        start, i = 0, 0
        while start < len(array):
            yield array[start : start + sizes[i % len(sizes)]]
            start, i = start + sizes[i % len(sizes)], i + 1
    return blocks


@pytest.mark.parametrize("block_rows", [3, 16, 1000])
def test_blockwise_search_is_the_brute_force_one(block_rows):
    rng = np.random.default_rng(block_rows)
    queries, base = rng.normal(size=(53, 24)).astype(np.float32), rng.normal(size=(71, 24)).astype(np.float32)
    index, sims = brute_force(queries, base)
    found = nearest_neighbours(queries, base, block_rows=block_rows, device="cpu")
    np.testing.assert_allclose(found.similarity, sims, atol=1e-5)
    assert (found.index == index).all()
    # within one set: never itself
    index, sims = brute_force(base, base, exclude_self=True)
    found = nearest_neighbours(base, base, exclude_self=True, block_rows=block_rows, device="cpu")
    np.testing.assert_allclose(found.similarity, sims, atol=1e-5)
    assert (found.index == index).all() and (found.index != np.arange(len(base))).all()


@pytest.mark.parametrize("sizes", [[7], [3, 11, 1], [200]])
def test_ties_go_to_the_lowest_index_in_any_blocking(sizes):
    """Rows of +-1 in 16 dimensions: unit rows of +-1/4, every similarity a multiple of 1/16, exact in float32
    in any order of summation, so ties are real ties; duplicated base rows tie exactly too."""
    rng = np.random.default_rng(len(sizes))
    queries = np.sign(rng.normal(size=(60, 16))).astype(np.float32)
    base = np.sign(rng.normal(size=(45, 16))).astype(np.float32)
    base = np.concatenate([base, base[::-1], 3 * base])  # each row three times, later copies scaled
    index, sims = brute_force(queries, base)
    cosines = queries @ base.T / (4 * np.linalg.norm(base, axis=1))
    assert ((cosines == sims[:, None]).sum(axis=1) >= 3).all()  # each maximum at least three times
    found = nearest_neighbours(in_blocks(queries, sizes), in_blocks(base, sizes[::-1]), device="cpu")
    assert (found.index == index).all() and (found.similarity == sims).all()
    index, sims = brute_force(base, base, exclude_self=True)
    found = nearest_neighbours(in_blocks(base, sizes), in_blocks(base, sizes[::-1]), exclude_self=True, device="cpu")
    assert (found.index == index).all() and (found.similarity == sims).all()
    assert (found.similarity == 1).all()  # every row has a copy elsewhere


def test_search_edge_cases():
    x = np.eye(3, dtype=np.float32)
    found = nearest_neighbours(x, np.zeros((0, 3), np.float32), device="cpu")
    assert (found.index == -1).all() and np.isneginf(found.similarity).all()
    found = nearest_neighbours(x[:1], x[:1], exclude_self=True, device="cpu")  # alone: no other row
    assert found.index.tolist() == [-1]
    assert nearest_neighbours(x[:0], x, device="cpu").index.shape == (0,)
    zero = nearest_neighbours(np.zeros((1, 3), np.float32), x, device="cpu")  # a zero row: similarity 0, first row
    assert zero.index.tolist() == [0] and zero.similarity.tolist() == [0.0]
    with pytest.raises(ValueError, match="same rows"):
        nearest_neighbours(x, x[:2], exclude_self=True, device="cpu")
    with pytest.raises(ValueError, match="values per row"):
        nearest_neighbours(x, np.eye(4, dtype=np.float32), device="cpu")


def test_pairs_above_a_threshold_closest_first_and_once_within_a_split():
    ids = ["t/a", "t/b", "t/c", "t/d"]
    found = Nearest(np.array([1, 0, 3, 0]), np.array([0.99, 0.99, 0.90, 0.97], np.float32))
    within = candidates(ids, ids, found, "test-test", threshold=0.95)
    assert [(p.id, p.nearest_id) for p in within] == [("t/a", "t/b"), ("t/a", "t/d")]  # a-b found twice: once
    across = candidates(ids, ["r/0", "r/1", "r/2", "r/3"], found, "test-train", threshold=0.95)
    assert [(p.id, p.nearest_id, round(p.cosine, 2)) for p in across] == [
        ("t/a", "r/1", 0.99), ("t/b", "r/0", 0.99), ("t/d", "r/0", 0.97)]
    assert len(pairs_of(ids, ids, found, "test-train", limit=2)) == 2
    assert len(pairs_of(ids, ids, found, "test-train")) == 4  # no threshold: all, for the picture


def test_pixel_check():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    grey = image.astype(np.float64) @ [0.299, 0.587, 0.114]
    np.testing.assert_allclose(small_grey(image, 16), grey.reshape(16, 2, 16, 2).mean(axis=(1, 3)), atol=1e-3)
    np.testing.assert_allclose(small_grey(image, 1), [[grey.mean()]], atol=1e-3)
    assert pixel_distance(image, image, 16) == 0
    assert pixel_distance(image, np.clip(image.astype(int) + 10, 0, 255).astype(np.uint8), 16) == pytest.approx(
        10, abs=0.5)  # brighter by 10 levels (a few clip at 255)
    raw = _cifar_bytes("train/cat/0000.jpg", "train/cat/0001.jpg")
    photo = np.asarray(Image.open(io.BytesIO(raw["train/cat/0000.jpg"])).convert("RGB"))
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="JPEG", quality=40)
    recoded = np.asarray(Image.open(buffer).convert("RGB"))
    other = np.asarray(Image.open(io.BytesIO(raw["train/cat/0001.jpg"])).convert("RGB"))
    assert pixel_distance(photo, recoded, 16) < 3 < 20 < pixel_distance(photo, other, 16)
    assert pixel_distance(photo, photo[:, ::-1], 16) > 20  # mirrored: not the same pixels
    small = {"a": small_grey(photo, 16), "b": small_grey(recoded, 16), "c": small_grey(other, 16)}
    pairs = [Pair("test-train", "a", "b", 0.99), Pair("test-train", "a", "c", 0.99), Pair("test-train", "b", "a", 0.9)]
    checked = check_pixels(pairs, small, tolerance=12, threshold=0.95)
    assert [p.confirmed for p in checked] == [True, False, False]  # the last: pixels agree, cosine below


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
    pairs = [Pair("test-train", "test/a.jpg", "train/x.jpg", 0.991, 1.5, True),
             Pair("test-train", "test/b.jpg", "train/y.jpg", 0.962, 40.0, False),
             Pair("test-val", "test/c.jpg", "train/z.jpg", 0.97, 3.0, True),
             Pair("val-train", "train/z.jpg", "train/x.jpg", 0.99, 2.0, True),
             Pair("test-test", "test/a.jpg", "test/d.jpg", 0.99, 2.0, True)]
    write_pairs(pairs, tmp_path / "pairs.csv")
    back = read_pairs(tmp_path / "pairs.csv")
    assert [(p.split_pair, p.id, p.nearest_id, p.confirmed) for p in back] == [
        (p.split_pair, p.id, p.nearest_id, p.confirmed) for p in pairs]
    assert near_copies(back) == {"test/a.jpg", "test/c.jpg"}  # confirmed, of test, in train or val
    assert near_copies(back, "test", ["train"]) == {"test/a.jpg"}
    summary = summarise(back, {"test-train": 10, "test-val": 10, "val-train": 5, "test-test": 10}, 0.95, 16, 12)
    assert summary["test_with_near_copy_in_train"] == 1 and summary["test_removed"] == 2
    assert summary["pairs"]["test-train"] == {"searched": 10, "candidates": 2, "confirmed": 1, "images": 1}
    assert summary["pairs"]["test-test"]["images"] == 2  # both images of a pair within test
    (tmp_path / "bad.csv").write_text("split_pair,id\ntest-train,a\n")
    with pytest.raises(PipelineError, match="columns"):
        read_pairs(tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError, match="run the leakage stage"):
        read_pairs(tmp_path / "none.csv")


@pytest.mark.parametrize("bad, message", [
    ({"threshold": 0}, "leakage.threshold: Input should be greater than 0"),
    ({"threshold": 1.2}, "leakage.threshold: Input should be less than or equal to 1 (got 1.2)"),
    ({"pixel_size": 1}, "leakage.pixel_size: Input should be greater than or equal to 2"),
    ({"pixel_tolerance": -1}, "leakage.pixel_tolerance: Input should be greater than or equal to 0"),
    ({"block_rows": 0}, "leakage.block_rows: Input should be greater than 0"),
    ({"treshold": 0.9}, "leakage.treshold: Extra inputs are not permitted"),
])
def test_leakage_params_are_validated(bad, message):
    with pytest.raises(ConfigError) as err:
        parse_params({"leakage": bad})
    assert message in str(err.value)


def test_params_yaml_shows_the_leakage_defaults():
    from pipeline.config import LeakageParams, load_params
    from tests.conftest import ROOT

    assert load_params(ROOT / "params.yaml").leakage == LeakageParams()


# -- the stage on real images and features -----------------------------------------------------------
PLANTED = {  # test image -> what it is a copy of
    "test/cat/planted-copy.jpg": "a training cat, byte for byte",
    "test/airplane/planted-recoded.jpg": "a training airplane, JPEG re-encoded at quality 75",
    "test/ship/planted-val.jpg": "a validation ship, byte for byte",
    "test/ship/zz-copy.jpg": "another test ship, byte for byte",
}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """3 CIFAR-10 classes (6 train, 3 test images each), with near-copies planted into the test folder,
    and a mirrored training cat (the same picture for the features, other pixels); pooled features of the
    real EfficientNet-Lite0 (the default backbone, ImageNet weights), then the leakage stage."""
    from pipeline.stages import extract, leakage, prepare

    root = tmp_path_factory.mktemp("leakage")
    images = write_cifar_folder(root / "images", ["airplane", "cat", "ship"], {"train": 6, "test": 3})
    raw = {"data": {"source": str(images), "val_fraction": 0.25}, "backbone": {"batch_size": 16, "cut": None},
           "heads": {}, "finetune": {}}
    params = parse_params(raw)
    prepare.run(params, root / "splits.json")  # which training images land in val (the test images do not matter)
    splits = json.loads((root / "splits.json").read_text())["splits"]
    train, val = splits["train"]["keys"], splits["val"]["keys"]
    cat, airplane = next(k for k in train if "/cat/" in k), next(k for k in train if "/airplane/" in k)
    ship = next(k for k in val if "/ship/" in k)
    shutil.copy(images / cat, images / "test/cat/planted-copy.jpg")
    Image.open(images / airplane).save(images / "test/airplane/planted-recoded.jpg", quality=75)
    shutil.copy(images / ship, images / "test/ship/planted-val.jpg")
    shutil.copy(images / "test/ship/0000.jpg", images / "test/ship/zz-copy.jpg")
    Image.open(images / cat).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(images / "test/cat/planted-mirror.jpg",
                                                                              quality=95)
    prepare.run(params, root / "splits.json")
    assert json.loads((root / "splits.json").read_text())["splits"]["val"]["keys"] == val
    extract.run(params, root / "splits.json", root / "pooled.h5", progress=False)
    summary = leakage.run(params, root / "pooled.h5", root / "splits.json", root / "out", device="cpu")
    with open(root / "out" / "pairs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {"summary": summary, "rows": rows, "out": root / "out", "sources": {
        "test/cat/planted-copy.jpg": cat, "test/airplane/planted-recoded.jpg": airplane,
        "test/ship/planted-val.jpg": ship, "test/ship/zz-copy.jpg": "test/ship/0000.jpg"}, "params": params}


def test_planted_near_copies_are_found_and_confirmed(planted):
    confirmed = {(r["split_pair"], r["id"], r["nearest_id"]) for r in planted["rows"] if r["confirmed"] == "true"}
    src = planted["sources"]
    assert confirmed == {
        ("test-train", "test/cat/planted-copy.jpg", src["test/cat/planted-copy.jpg"]),
        ("test-train", "test/airplane/planted-recoded.jpg", src["test/airplane/planted-recoded.jpg"]),
        ("test-val", "test/ship/planted-val.jpg", src["test/ship/planted-val.jpg"]),
        ("test-test", "test/ship/0000.jpg", "test/ship/zz-copy.jpg"),
    }
    by_id = {(r["split_pair"], r["id"]): r for r in planted["rows"]}
    exact = by_id["test-train", "test/cat/planted-copy.jpg"]
    assert float(exact["cosine"]) > 0.9999 and float(exact["pixel_distance"]) == 0
    recoded = by_id["test-train", "test/airplane/planted-recoded.jpg"]
    assert 0 < float(recoded["pixel_distance"]) <= planted["params"].leakage.pixel_tolerance
    # every listed pair is at or above the threshold; the unrelated test images are not confirmed
    assert all(float(r["cosine"]) >= planted["params"].leakage.threshold for r in planted["rows"])
    assert not {r["id"] for r in planted["rows"] if r["confirmed"] == "true"} & {
        f"test/{c}/000{i}.jpg" for c in ("airplane", "cat") for i in range(3)}
    # the mirrored cat: the features call it the same picture, the pixels do not
    mirror = by_id.get(("test-train", "test/cat/planted-mirror.jpg"))
    assert mirror is None or (mirror["confirmed"] == "false" and float(mirror["pixel_distance"]) > 20)
    summary = json.loads((planted["out"] / "summary.json").read_text())
    assert summary == planted["summary"]
    assert summary["test_with_near_copy_in_train"] == 2 and summary["test_removed"] == 3
    assert summary["pairs"]["test-train"]["searched"] == 14 and summary["pairs"]["val-train"]["searched"] == 6
    assert summary["pairs"]["test-test"]["confirmed"] == 1 and summary["pairs"]["test-test"]["images"] == 2
    assert Image.open(planted["out"] / "pairs.png").size[0] > 400
    assert sorted(p.name for p in planted["out"].iterdir()) == ["pairs.csv", "pairs.png", "summary.json"]


# -- compare: the test figure without near-copies ---------------------------------------------------
def _evaluated(folder: Path, name: str, right: dict[str, bool]) -> Path:
    folder.mkdir(parents=True)
    with open(folder / "test_predictions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "actual", "predicted"])
        writer.writerows((i, "cat", "cat" if ok else "dog") for i, ok in right.items())
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
    pairs = [Pair("test-train", ids[0], "train/0.jpg", 0.99, 0.5, True),
             Pair("test-val", ids[8], "train/5.jpg", 0.98, 2.0, True),
             Pair("test-train", ids[9], "train/1.jpg", 0.99, 1.0, True),
             Pair("test-train", ids[1], "train/2.jpg", 0.97, 60.0, False),  # the pixels differ: kept
             Pair("test-test", ids[2], ids[3], 0.99, 0.0, True),  # within test: kept
             Pair("val-train", "train/5.jpg", "train/6.jpg", 0.99, 0.0, True)]
    write_pairs(pairs, tmp_path / "pairs.csv")
    rows = compare.run([a, b], tmp_path / "comparison", tmp_path / "pairs.csv")
    clean = {r["name"]: r["test_without_near_copies"] for r in rows}
    # removed: 0, 8, 9. a is right on 1-6 of the 7 left, b on 2, 4, 6
    assert clean["a"] | {"top1_low": 0, "top1_high": 0} == {"n": 7, "removed": 3, "top1": 6 / 7, "top1_low": 0,
                                                             "top1_high": 0}
    assert clean["b"]["top1"] == pytest.approx(3 / 7) and clean["b"]["removed"] == 3
    table = (tmp_path / "comparison.md").read_text()
    assert "test top-1 without near-copies (3 removed)" in table and f"| {6 / 7:.4f} (" in table
    assert "on the 7 test images" in table
    # no confirmed pair: the same figure as the full test split
    write_pairs(pairs[3:4], tmp_path / "none.csv")
    rows = compare.run([a, b], tmp_path / "comparison", tmp_path / "none.csv")
    assert [(r["test_without_near_copies"]["top1"], r["test_without_near_copies"]["removed"]) for r in rows] == [
        (0.7, 0), (0.5, 0)]
    # pairs of other test images than those evaluated: stale
    write_pairs([Pair("test-train", "test/other.jpg", "train/0.jpg", 0.99, 0.0, True)], tmp_path / "stale.csv")
    with pytest.raises(PipelineError, match="re-run the leakage and evaluate stages"):
        compare.run([a, b], tmp_path / "comparison", tmp_path / "stale.csv")
