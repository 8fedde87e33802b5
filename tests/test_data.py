import tarfile

import numpy as np
import pytest
import torch

from pipeline.core.errors import BadImageError, DatasetError
from pipeline.data.images import BatchStream, decode_image
from pipeline.data.preprocessing import ImageGeometry
from pipeline.data.sources import Splits, make_splits, open_source
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


# -- images below class folders, dot entries, what prepare reports ---------------------------------
NESTED = {  # class b has images only in sub-folders; dot-files and dot-folders are not images of a class
    "train/a/0.png", "train/a/1.png", "train/a/more/2.png", "train/a/.hidden/3.png", "train/a/.x.png",
    "train/b/deep/er/0.png", "train/b/deep/er/1.png", "train/b/deep/1.png",
    "test/a/0.png", "test/b/x/0.png", ".thumbs/train/c/0.png",
}
NESTED_KEYS = sorted(k for k in NESTED if not any(p.startswith(".") for p in k.split("/")))


def as_source(root, kind: str, tmp_path):
    """``root`` itself (``kind`` "folder"), or a tar archive of it under a top folder (``"tar"``)."""
    if kind == "folder":
        return root
    location = tmp_path / "images.tar"
    with tarfile.open(location, "w") as tar:
        tar.add(root, arcname="top")
    return location


def _nested_folder(root):
    rng = np.random.default_rng(0)
    for key in sorted(NESTED):
        write_image(root / key, rng)
    return root


@pytest.mark.parametrize("kind", ["folder", "tar"])
def test_images_in_sub_folders_of_class_folders_are_taken(tmp_path, kind):
    root = _nested_folder(tmp_path / "images")
    location = root
    if kind == "tar":
        location = tmp_path / "images.tar.gz"
        with tarfile.open(location, "w:gz") as tar:
            tar.add(root, arcname="top")
    source = open_source(location)
    assert sorted(k for k, _, _ in source.entries()) == NESTED_KEYS
    assert {k: (s, c) for k, s, c in source.entries()}["train/b/deep/er/0.png"] == ("train", "b")
    splits = make_splits(source, 0.0, None, seed=0)
    assert splits.classes == ["a", "b"]
    assert sorted(splits.splits["train"].keys + splits.splits["test"].keys) == NESTED_KEYS
    streamed = dict(open_source(location).stream(splits.splits["train"].keys))
    assert streamed["train/b/deep/er/1.png"] == (root / "train/b/deep/er/1.png").read_bytes()


@pytest.mark.parametrize("kind", ["folder", "tar"])
def test_class_folder_with_images_only_in_a_dot_folder_is_empty(tmp_path, kind):
    root = _nested_folder(tmp_path / "images")
    write_image(root / "train/c/.thumbs/0.png", np.random.default_rng(0))
    (root / "train/c/notes.txt").write_text("not an image")
    location = as_source(root, kind, tmp_path)
    with pytest.raises(DatasetError, match="class folders with no images: \\['train/c'\\]"):
        make_splits(open_source(location), 0.0, None, seed=0)


def test_prepare_says_how_many_images_were_found_where(tmp_path, capsys):
    from pipeline.core.config import parse_params
    from pipeline.stages import prepare

    root = _nested_folder(tmp_path / "images")
    prepare.run(parse_params({"data": {"source": str(root), "val_fraction": 0.0}}), tmp_path / "splits.json")
    out = capsys.readouterr().out
    assert "train: 6 images (4 in sub-folders of class folders)" in out, out
    assert "test: 2 images (1 in sub-folders of class folders)" in out, out


# -- 16-bit images and EXIF orientation ---------------------------------------------------------
def test_16_bit_grayscale_png_is_scaled_to_8_bits(tmp_path):
    from PIL import Image

    from pipeline.data.images import read_rgb

    gradient = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (8, 1))  # (8, 64), dark to white
    Image.fromarray(gradient).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode in ("I;16", "I")
    rgb = read_rgb((tmp_path / "deep.png").read_bytes())
    expected = np.round(gradient / 257).astype(np.uint8)
    assert rgb.shape == (3, 8, 64) and rgb.dtype == torch.uint8
    for channel in rgb.numpy():
        np.testing.assert_array_equal(channel, expected)
    assert (rgb == 255).float().mean() < 0.05


def test_32_bit_integer_image_is_scaled_only_above_255():
    from PIL import Image

    from pipeline.data.images import read_rgb

    wide = np.tile(np.linspace(0, 65535, 32).round().astype(np.int32), (4, 1))
    assert Image.fromarray(wide).mode == "I"
    np.testing.assert_array_equal(read_rgb(Image.fromarray(wide)).numpy()[0], np.round(wide / 257))
    narrow = np.tile(np.arange(0, 256, 8, dtype=np.int32), (4, 1))  # 8-bit values kept as they are
    np.testing.assert_array_equal(read_rgb(Image.fromarray(narrow)).numpy()[1], narrow)


@pytest.mark.parametrize("orientation, turns", [(6, -1), (8, 1), (3, 2)])
def test_exif_orientation_is_applied(tmp_path, orientation, turns):
    """A photo stored sideways with an EXIF orientation tag is decoded the way it is displayed."""
    from PIL import Image

    from pipeline.data.images import read_rgb

    stored = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high, four distinct quadrants
    stored[:10, :20] = (255, 0, 0)
    stored[:10, 20:] = (0, 255, 0)
    stored[10:, :20] = (0, 0, 255)
    stored[10:, 20:] = (255, 255, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "photo.jpg", quality=95, exif=exif)
    shown = np.rot90(stored, turns)  # np.rot90 turns counter-clockwise; orientation 6 is shown turned clockwise
    rgb = read_rgb((tmp_path / "photo.jpg").read_bytes()).permute(1, 2, 0).numpy()
    assert rgb.shape == shown.shape
    assert np.abs(rgb.astype(int) - shown).mean() < 8
    decoded = decode_image((tmp_path / "photo.jpg").read_bytes(), ImageGeometry(resize_size=20, crop_size=20))
    centre = shown[10:30] if shown.shape[0] == 40 else shown[:, 10:30]  # no resizing: the short side is 20
    assert np.abs(decoded.permute(1, 2, 0).numpy().astype(int) - centre).mean() < 8


# -- archives as people make them ---------------------------------------------------------------
def _add_bytes(tar, name, data=b"junk"):
    import io

    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("extras", [
    ["__MACOSX/top/train/cat/._0000.jpg", "__MACOSX/top/._train"],  # zipped on a Mac, then re-packed
    ["README.md", "LICENSE"],                                          # files beside the top folder
    [".DS_Store", "top/.DS_Store", "top/train/.DS_Store"],
])
def test_archive_top_folder_is_found_beside_common_extras(cifar_folder, tmp_path, extras):
    archive = tmp_path / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in extras[:1]:
            _add_bytes(tar, name)
        tar.add(cifar_folder, arcname="top")
        for name in extras[1:]:
            _add_bytes(tar, name)
    from_tar = make_splits(open_source(archive), 0.25, None, seed=0)
    from_dir = make_splits(open_source(cifar_folder), 0.25, None, seed=0)
    assert from_tar.classes == ["airplane", "cat", "ship"]
    assert {n: s.keys for n, s in from_tar.splits.items()} == {n: s.keys for n, s in from_dir.splits.items()}
    keys = from_tar.splits["test"].keys
    assert dict(open_source(archive).stream(keys)) == dict(open_source(cifar_folder).stream(keys))


@pytest.mark.parametrize("kind", ["folder", "tar"])
def test_layout_not_found_lists_what_the_top_levels_hold(cifar_folder, tmp_path, kind):
    import shutil

    root = tmp_path / "images"
    shutil.copytree(cifar_folder, root / "data" / "cifar")  # two folders above train/ and test/
    (root / "README.md").write_text("my images")
    location = as_source(root, kind, tmp_path)
    with pytest.raises(DatasetError) as err:
        make_splits(open_source(location), 0.0, None, seed=0)
    message = str(err.value)
    assert "no layout recognised" in message and "fewer than two class folders" in message
    holds = "top/data/cifar/" if kind == "tar" else "data/cifar/"
    assert holds in message and "README.md" in message, message


# -- the official CIFAR-10 python batches --------------------------------------------------------
def _write_cifar_batches(root, per_batch=3):
    """A tiny cifar-10-batches-py: 5 train batches and a test batch, pickled as the official files."""
    import pickle

    rng = np.random.default_rng(0)
    root.mkdir()
    names = ["plane", "car", "bird"]
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_vis": 3072}, f, protocol=2)
    written = {}
    for split, files in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        data = rng.integers(0, 256, (len(files) * per_batch, 3072), dtype=np.uint8)
        labels = [i % len(names) for i in range(len(data))]
        for j, name in enumerate(files):
            rows = slice(j * per_batch, (j + 1) * per_batch)
            batch = {b"batch_label": name.encode(), "data": data[rows], "labels": labels[rows],
                     "filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)]}
            with open(root / name, "wb") as f:
                pickle.dump(batch, f, protocol=2)
        written[split] = (data, [names[label] for label in labels])
    return written


def test_cifar10_python_batches_source(tmp_path):
    from PIL import Image

    from pipeline.data.sources import Cifar10BatchesSource

    root = tmp_path / "cifar-10-batches-py"
    written = _write_cifar_batches(root)
    source = open_source(root)
    assert isinstance(source, Cifar10BatchesSource)
    entries = source.entries()
    train_data, train_classes = written["train"]
    test_data, test_classes = written["test"]
    assert entries == [(f"train/{i:05d}", "train", c) for i, c in enumerate(train_classes)] + [
        (f"test/{i:05d}", "test", c) for i, c in enumerate(test_classes)]
    keys = ["train/00000", "train/00004", "train/00014", "test/00001"]
    streamed = list(source.stream(keys))
    assert [k for k, _ in streamed] == keys
    rows = [train_data[0], train_data[4], train_data[14], test_data[1]]
    for (_, image), row in zip(streamed, rows):
        assert isinstance(image, Image.Image) and image.size == (32, 32) and image.mode == "RGB"
        # CIFAR rows are 1024 red, then 1024 green, then 1024 blue values, row-major
        np.testing.assert_array_equal(np.asarray(image), row.reshape(3, 32, 32).transpose(1, 2, 0))
    splits = make_splits(source, 0.2, None, seed=0)
    assert splits.classes == ["bird", "car", "plane"]
    assert {n: len(s) for n, s in splits.splits.items()} == {"train": 12, "val": 3, "test": 3}
    for key, label in zip(splits.splits["val"].keys, splits.splits["val"].labels):
        assert splits.classes[label] == train_classes[int(key.split("/")[1])]
    decoded = next(iter(BatchStream(source, keys, 4, [0], GEOMETRY)))[1]
    assert decoded.shape == (4, 3, 32, 32)


# -- the archive reader ---------------------------------------------------------------------------
def _tarfile_members(path, read_every=1):
    """What tarfile reads in the archive: (name, is a file, the bytes of every ``read_every``-th file)."""
    out = []
    with tarfile.open(path, mode="r|*") as tar:
        for i, m in enumerate(tar):
            out.append((m.name, m.isfile(), tar.extractfile(m).read() if m.isfile() and i % read_every == 0 else None))
    return out


def _fast_members(path, read_every=1):
    from pipeline.data import archive

    return [(name, is_file, read() if is_file and i % read_every == 0 else None)
            for i, (name, is_file, read) in enumerate(archive.members(path))]


def test_the_archive_reader_reads_the_shipped_archive_as_tarfile_does():
    assert _fast_members(CIFAR_ARCHIVE, read_every=613) == _tarfile_members(CIFAR_ARCHIVE, read_every=613)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2"])
def test_the_archive_reader_reads_every_format_tarfile_writes(tmp_path, fmt, mode):
    """Long names (ustar's prefix field, GNU long names, pax paths), non-ASCII names, folders, an empty file,
    a link, a large file, gzip and plain (bzip2 goes through tarfile)."""
    import io

    rng = np.random.default_rng(0)
    path = tmp_path / f"a.tar{mode[1:].replace(':', '.')}"
    entries = {
        "train/": None, "train/cat/": None, "train/cat/0001.jpg": b"\xff\xd8 jpeg",
        "d" * 60 + "/" + "e" * 60 + "/café.jpg": rng.bytes(513),  # past the 100 characters of a name field
        "train/empty.jpg": b"", "big.bin": rng.bytes(3 * 1024 * 1024 + 7),
    }
    if fmt != tarfile.USTAR_FORMAT:  # a name of one 125-character part: GNU long names, pax paths
        entries["train/cat/" + "long_" * 24 + ".png"] = rng.bytes(3000)
    with tarfile.open(path, mode, format=fmt) as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name.rstrip("/"))
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("train/cat/link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "0001.jpg"
        tar.addfile(link)
    fast = _fast_members(path)
    assert fast == _tarfile_members(path)
    assert ("big.bin", True) in [(n, f) for n, f, _ in fast] and fast[-1][:2] == ("train/cat/link.jpg", False)


def test_a_damaged_archive_is_a_clear_error(tmp_path):
    data = CIFAR_ARCHIVE.read_bytes()[: 1 << 20]  # cut in the middle
    (tmp_path / "cut.tar.gz").write_bytes(data)
    with pytest.raises(DatasetError, match=r"cannot read archive .*cut.tar.gz: unexpected end of the archive"):
        open_source(tmp_path / "cut.tar.gz").all_files()
    (tmp_path / "bad.tar").write_bytes(b"x" * 2048)
    with pytest.raises(DatasetError, match=r"cannot read archive"):
        open_source(tmp_path / "bad.tar").all_files()


def test_images_by_id_are_read_in_one_pass_large_jpegs_reduced(tmp_path):
    """read_images / thumbnails: the images asked for, from a folder; a large JPEG decoded at the smallest DCT
    scale that still covers what is asked (640 x 480 for 32 px: 1/8, 80 x 60); an id the dataset no longer holds
    and a corrupt file are refused naming them."""
    from pipeline.data.images import read_images, thumbnails

    rng = np.random.default_rng(0)
    write_image(tmp_path / "train" / "a" / "big.jpg", rng, size=(640, 480))
    write_image(tmp_path / "train" / "a" / "small.png", rng, size=(20, 16))
    write_image(tmp_path / "test" / "b" / "x.png", rng, size=(40, 30))
    got = dict(read_images(str(tmp_path), ["train/a/big.jpg", "train/a/small.png"], cover=32))
    assert got["train/a/big.jpg"].shape == (60, 80, 3) and got["train/a/small.png"].shape == (16, 20, 3)
    assert dict(read_images(str(tmp_path), ["train/a/big.jpg"]))["train/a/big.jpg"].shape == (480, 640, 3)
    thumbs = thumbnails(str(tmp_path), {"train/a/big.jpg", "test/b/x.png"}, 96)
    assert thumbs["train/a/big.jpg"].shape == (72, 96, 3) and thumbs["test/b/x.png"].shape == (30, 40, 3)
    with pytest.raises(DatasetError, match=r"no longer holds 1 of the images asked for \(\['test/b/gone.png'\]\)"):
        dict(read_images(str(tmp_path), ["test/b/x.png", "test/b/gone.png"]))
    (tmp_path / "test" / "b" / "x.png").write_bytes(b"not an image")
    with pytest.raises(BadImageError, match="test/b/x.png"):
        thumbnails(str(tmp_path), {"test/b/x.png"}, 96)


def test_images_by_id_in_the_datasets_order_skip_listing_it(tmp_path, monkeypatch):
    """ordered=True: the keys, as splits.json lists them, are streamed without listing the dataset first (2 s for
    CIFAR-10's archive, on every head swap's mistakes); an id a folder or an archive no longer holds is refused,
    naming it."""
    from pipeline.data import sources
    from pipeline.data.images import read_images

    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        write_image(tmp_path / "test" / "c" / name, rng)
    monkeypatch.setattr(sources.FolderSource, "entries", lambda self: pytest.fail("listed the dataset"))
    got = dict(read_images(str(tmp_path), ["test/c/a.png", "test/c/b.png"], ordered=True))
    assert sorted(got) == ["test/c/a.png", "test/c/b.png"]
    with pytest.raises(BadImageError, match="test/c/gone.png.*FileNotFoundError"):  # a folder: the file is not there
        dict(read_images(str(tmp_path), ["test/c/a.png", "test/c/gone.png"], ordered=True))
    archive = tmp_path / "images.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "test", arcname="test")
    with pytest.raises(BadImageError, match="test/c/gone.png.*missing from the archive"):
        dict(read_images(str(archive), ["test/c/a.png", "test/c/gone.png"], ordered=True))
