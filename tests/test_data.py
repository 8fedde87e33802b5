import tarfile

import numpy as np
import pytest
import torch

from pipeline.images import BatchStream, decode_image
from pipeline.preprocessing import ImageGeometry
from pipeline.sources import Splits, make_splits, open_source
from pipeline.errors import BadImageError, DatasetError
from tests.conftest import CIFAR_ARCHIVE, write_image

GEOMETRY = ImageGeometry(resize_size=40, crop_size=32)


def test_folder_classes_sorted_labels_follow(cifar_folder):
    splits = make_splits(open_source(cifar_folder), val_fraction=0.25, subset_per_class=None, seed=0)
    assert splits.classes == ["airplane", "cat", "ship"]
    train = splits.splits["train"]
    for key, label in zip(train.keys, train.labels):
        assert key.split("/")[1] == splits.classes[label]
    counts = {n: len(s) for n, s in splits.splits.items()}
    assert counts == {"train": 18, "val": 6, "test": 12}
    # stratified: 2 of the 8 training images of each class go to val
    assert np.bincount(splits.splits["val"].labels).tolist() == [2, 2, 2]
    assert not set(splits.splits["val"].keys) & set(train.keys)


def test_split_is_seeded_and_reproducible(cifar_folder):
    src = open_source(cifar_folder)
    a = make_splits(src, 0.25, None, seed=1)
    b = make_splits(src, 0.25, None, seed=1)
    c = make_splits(src, 0.25, None, seed=2)
    assert a.fingerprint == b.fingerprint
    assert a.splits["val"].keys != c.splits["val"].keys


def test_subset_per_class_is_stratified(cifar_folder):
    splits = make_splits(open_source(cifar_folder), 0.0, subset_per_class=3, seed=0)
    assert np.bincount(splits.splits["train"].labels).tolist() == [3, 3, 3]
    assert np.bincount(splits.splits["test"].labels).tolist() == [3, 3, 3]
    assert len(splits.splits["val"]) == 0


def test_archive_equals_folder(cifar_folder, tmp_path):
    for suffix, mode in ((".tar", "w"), (".tar.gz", "w:gz")):
        archive = tmp_path / f"images{suffix}"
        with tarfile.open(archive, mode) as tar:
            tar.add(cifar_folder, arcname="top")  # one top-level directory above train/ and test/
        from_tar = make_splits(open_source(archive), 0.25, None, seed=0)
        from_dir = make_splits(open_source(cifar_folder), 0.25, None, seed=0)
        assert from_tar.classes == from_dir.classes
        assert {n: s.keys for n, s in from_tar.splits.items()} == {n: s.keys for n, s in from_dir.splits.items()}
        keys = from_tar.splits["test"].keys
        assert [k for k, _ in open_source(archive).stream(keys)] == keys
        tar_bytes = dict(open_source(archive).stream(keys))
        dir_bytes = dict(open_source(cifar_folder).stream(keys))
        assert tar_bytes == dir_bytes


def test_splits_roundtrip_and_tamper_check(cifar_folder, tmp_path):
    splits = make_splits(open_source(cifar_folder), 0.25, None, seed=0)
    splits.save(tmp_path / "splits.json")
    loaded = Splits.load(tmp_path / "splits.json")
    assert loaded.fingerprint == splits.fingerprint
    text = (tmp_path / "splits.json").read_text().replace("airplane/0000.jpg", "airplane/0001.jpg", 1)
    (tmp_path / "splits.json").write_text(text)
    with pytest.raises(DatasetError, match="fingerprint"):
        Splits.load(tmp_path / "splits.json")


def test_any_pil_format_and_grayscale_become_rgb(tmp_path):
    rng = np.random.default_rng(0)
    write_image(tmp_path / "a.png", rng, mode="L")
    write_image(tmp_path / "b.bmp", rng)
    for name in ("a.png", "b.bmp"):
        image = decode_image((tmp_path / name).read_bytes(), GEOMETRY)
        assert image.shape == (3, 32, 32) and image.dtype == torch.uint8


def _folder(tmp_path, layout):
    rng = np.random.default_rng(0)
    for split, classes in layout.items():
        for cls, n in classes.items():
            (tmp_path / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                write_image(tmp_path / split / cls / f"{i}.png", rng)
    return open_source(tmp_path)


@pytest.mark.parametrize(
    "layout, message",
    [
        ({"train": {"a": 2, "b": 2}}, "split 'test' has no images"),
        ({"train": {"a": 2}, "test": {"a": 1}}, "one class"),
        ({"train": {"a": 2, "b": 0}, "test": {"a": 1, "b": 1}}, "class folders with no images: \\['train/b'\\]"),
        ({"train": {"a": 2, "b": 2}, "test": {"a": 1, "c": 1}}, "no training images: \\['c'\\]"),
    ],
)
def test_bad_layouts_are_clear_errors(tmp_path, layout, message):
    with pytest.raises(DatasetError, match=message):
        make_splits(_folder(tmp_path, layout), 0.0, None, seed=0)


def test_missing_source_names_the_choices(tmp_path):
    with pytest.raises(DatasetError, match="does not exist.*image-folder"):
        open_source(tmp_path / "nope")


def test_corrupt_image_stops_or_is_skipped(cifar_folder, tmp_path):
    import shutil

    root = tmp_path / "images"
    shutil.copytree(cifar_folder, root)
    (root / "train" / "cat" / "0001.jpg").write_bytes(b"not a jpeg at all")
    source = open_source(root)
    splits = make_splits(source, 0.0, None, seed=0)
    keys = splits.splits["train"].keys
    stream = BatchStream(source, keys, batch_size=8, batches=[0, 1, 2], geometry=GEOMETRY)
    with pytest.raises(BadImageError, match="train/cat/0001.jpg"):
        list(stream)
    skipping = BatchStream(source, keys, batch_size=8, batches=[0, 1, 2], geometry=GEOMETRY, skip_bad=True)
    valid = torch.cat([v for _, _, v in skipping])
    assert [keys[i] for i in np.flatnonzero(~valid.numpy())] == ["train/cat/0001.jpg"]


def test_batches_in_order_with_workers(cifar_folder):
    source = open_source(cifar_folder)
    keys = make_splits(source, 0.0, None, seed=0).splits["train"].keys
    stream = BatchStream(source, keys, batch_size=5, batches=[0, 1, 2, 3, 4], geometry=GEOMETRY)

    class Wrapped(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(stream)

    serial = [(b, x) for b, x, _ in stream]
    loader = torch.utils.data.DataLoader(Wrapped(), batch_size=None, num_workers=2)
    parallel = [(b, x) for b, x, _ in loader]
    assert [b for b, _ in parallel] == [0, 1, 2, 3, 4]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(serial, parallel))


def test_shipped_archive_is_complete_cifar10():
    source = open_source(CIFAR_ARCHIVE)
    entries = source.entries()
    assert len(entries) == 60000
    assert sorted({c for _, _, c in entries}) == [
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"
    ]


def test_archive_made_with_tar_dot(cifar_folder, tmp_path):
    """`tar -C dir -cf x.tar .` stores a member named '.': it is not a split."""
    archive = tmp_path / "dot.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(cifar_folder, arcname=".")
    splits = make_splits(open_source(archive), 0.0, None, seed=0)
    assert splits.classes == ["airplane", "cat", "ship"] and len(splits.splits["test"]) == 12


def test_unreadable_file_is_skipped_when_allowed(cifar_folder, tmp_path):
    import shutil

    root = tmp_path / "images"
    shutil.copytree(cifar_folder, root)
    (root / "train" / "cat" / "0002.jpg").unlink()
    (root / "train" / "cat" / "0002.jpg").symlink_to(tmp_path / "gone.jpg")  # listed, but cannot be read
    source = open_source(root)
    keys = make_splits(source, 0.0, None, seed=0).splits["train"].keys
    with pytest.raises(BadImageError, match="train/cat/0002.jpg"):
        list(BatchStream(source, keys, 8, [0, 1, 2], GEOMETRY))
    valid = torch.cat([v for _, _, v in BatchStream(source, keys, 8, [0, 1, 2], GEOMETRY, skip_bad=True)])
    assert [keys[i] for i in np.flatnonzero(~valid.numpy())] == ["train/cat/0002.jpg"]


@pytest.mark.parametrize("geometry", [ImageGeometry(256, 224, "bicubic"), ImageGeometry(232, 224, "bilinear"),
                                      ImageGeometry(36, 32, "bicubic"), ImageGeometry(20, 24, "bilinear"),
                                      ImageGeometry(256, 224, "nearest")])
def test_decoding_matches_torchvision_resize_then_center_crop(cifar_folder, tmp_path, geometry):
    """decode_image's pixels are torchvision's resize + center_crop on the PIL image."""
    import io

    from PIL import Image, ImageFilter
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    rng = np.random.default_rng(0)
    for name, (w, h) in (("wide.png", (500, 375)), ("tall.png", (375, 500)), ("odd.png", (301, 299))):
        noise = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        noise.filter(ImageFilter.GaussianBlur(3)).save(tmp_path / name)  # photo-like: smooth
        noise.save(tmp_path / f"noise-{name}")  # where the filter's overshoot clips
    files = sorted(cifar_folder.rglob("*.jpg"))[:20] + sorted(tmp_path.glob("*.png"))
    for path in files:
        raw = path.read_bytes()
        image = Image.open(io.BytesIO(raw)).convert("RGB")
        reference = TF.pil_to_tensor(TF.center_crop(
            TF.resize(image, geometry.resize_size, interpolation=InterpolationMode(geometry.interpolation)),
            geometry.crop_size))
        ours = decode_image(raw, geometry)
        assert ours.shape == reference.shape == (3, geometry.crop_size, geometry.crop_size)
        difference = (ours.int() - reference.int()).abs().max().item()
        # identical for the default (a CIFAR image up-scaled bicubically to 256, cropped to 224); otherwise
        # fixed-point rounding of the filter weights moves a few pixels by at most 2 levels of 255
        exact = geometry.interpolation == "nearest" or (geometry.resize_size == 256 and path.suffix == ".jpg")
        assert difference == 0 if exact else difference <= 2, path
