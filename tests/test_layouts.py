"""Users' own images: the layouts (split folders with val/, class folders, a CSV label file), reduced JPEG
decoding, and odd inputs (HEIC/AVIF, decompression bombs, a class with one image), on real CIFAR-10 JPEGs."""

from __future__ import annotations

import io
import shutil
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.core.errors import BadImageError, DatasetError
from pipeline.data.images import BatchStream, decode_image, read_rgb
from pipeline.data.preprocessing import ImageGeometry
from pipeline.data.sources import CLASS_LAYOUT, LABEL_LAYOUT, SPLIT_LAYOUT, LabelFile, make_splits, open_source
from tests.conftest import write_cifar_folder

CLASSES = ["airplane", "cat", "ship"]
GEOMETRY = ImageGeometry(resize_size=256, crop_size=224)


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory):
    """``<root>/<class>/<image>``, no split folders: 10 real CIFAR-10 JPEGs of each of 3 classes."""
    tmp = tmp_path_factory.mktemp("class-folder")
    write_cifar_folder(tmp / "src", CLASSES, {"train": 10})
    shutil.move(tmp / "src" / "train", tmp / "photos")
    return tmp / "photos"


def _tar(root, tmp_path, top="top"):
    archive = tmp_path / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname=top)
    return archive


def _keys(splits):
    return {name: split.keys for name, split in splits.splits.items()}


# -- class folders: test carved ---------------------------------------------------------------
@pytest.mark.parametrize("kind", ["folder", "tar"])
def test_class_folders_get_a_stratified_test_split_seeded_on_its_own(class_folder, tmp_path, kind):
    location = class_folder if kind == "folder" else _tar(class_folder, tmp_path)
    source = open_source(location)
    splits = make_splits(source, 0.25, None, seed=0, test_fraction=0.2, test_seed=0)
    assert splits.settings["layout"] == CLASS_LAYOUT and splits.classes == CLASSES
    assert [len(s) for s in splits.splits.values()] == [18, 6, 6]  # of 10 per class: 2 test, 2 val, 6 train
    for name, split in splits.splits.items():
        assert np.bincount(split.labels).tolist() == {"train": [6] * 3, "val": [2] * 3, "test": [2] * 3}[name]
        assert all(key.split("/")[0] == CLASSES[label] for key, label in zip(split.keys, split.labels))
        order = [k for k in source.files() if k in set(split.keys)]
        assert split.keys == order  # each split in the source's streaming order
    reseeded = make_splits(source, 0.25, None, seed=1, test_fraction=0.2, test_seed=0)
    assert reseeded.splits["test"].keys == splits.splits["test"].keys  # `seed` leaves the test set alone
    assert reseeded.splits["val"].keys != splits.splits["val"].keys
    other_test = make_splits(source, 0.25, None, seed=0, test_fraction=0.2, test_seed=1)
    assert other_test.splits["test"].keys != splits.splits["test"].keys
    again = make_splits(open_source(location), 0.25, None, seed=0, test_fraction=0.2, test_seed=0)
    assert again.fingerprint == splits.fingerprint


def test_prepare_says_which_layout_and_what_it_carved(class_folder, tmp_path, capsys):
    from pipeline.core.config import parse_params
    from pipeline.stages import prepare

    params = parse_params({"data": {"source": str(class_folder), "test_fraction": 0.3, "test_seed": 5}})
    counts = prepare.run(params, tmp_path / "splits.json")
    out = capsys.readouterr().out
    assert f"prepared {class_folder}: found 30 images; 3 classes" in out, out
    assert "layout: class folders (<root>/<class>/<image>)" in out, out
    assert "test carved: 0.3 of each class (data.test_fraction), seeded by data.test_seed = 5" in out, out
    assert "val carved from train: 0.1 of each class" in out and counts == {"train": 18, "val": 3, "test": 9}, out


def test_a_class_with_one_image_stays_in_train_and_prepare_says_so(class_folder, tmp_path, capsys):
    from pipeline.core.config import parse_params
    from pipeline.stages import prepare

    root = tmp_path / "photos"
    shutil.copytree(class_folder, root)
    (root / "owl").mkdir()
    shutil.copy(next((root / "cat").iterdir()), root / "owl" / "only.jpg")
    prepare.run(parse_params({"data": {"source": str(root)}}), tmp_path / "splits.json")
    out = capsys.readouterr().out
    assert "classes without test images (too few images to carve one: a class needs two): ['owl']" in out, out
    from pipeline.data.sources import Splits

    splits = Splits.load(tmp_path / "splits.json")
    owl = splits.classes.index("owl")
    assert splits.splits["train"].labels.count(owl) == 1 and owl not in splits.splits["test"].labels + splits.splits["val"].labels


def test_split_folders_beside_other_folders_are_refused(class_folder, tmp_path):
    root = tmp_path / "photos"
    shutil.copytree(class_folder, root / "train")
    shutil.copytree(class_folder / "cat", root / "dog")
    with pytest.raises(DatasetError, match="split folders \\['train'\\] beside other folders \\['dog'\\]"):
        make_splits(open_source(root), 0.1, None, seed=0)


# -- a val/ folder ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["folder", "tar"])
def test_a_val_folder_is_used_as_given(tmp_path, kind, capsys):
    from pipeline.core.config import parse_params
    from pipeline.data.sources import Splits
    from pipeline.stages import prepare

    root = write_cifar_folder(tmp_path / "images", CLASSES, {"train": 6, "test": 3})
    shutil.copytree(root / "test", root / "val")  # the val images: real, named as given
    for path in sorted((root / "val").rglob("*.jpg")):
        path.rename(path.with_name("v" + path.name))
    location = root if kind == "folder" else _tar(root, tmp_path)
    prepare.run(parse_params({"data": {"source": str(location), "val_fraction": 0.5}}), tmp_path / "splits.json")
    out = capsys.readouterr().out
    assert "layout: split folders" in out and "val as given (data.val_fraction not used)" in out, out
    splits = Splits.load(tmp_path / "splits.json")
    assert splits.settings["layout"] == SPLIT_LAYOUT and splits.settings["val"] == "given"
    assert all(k.startswith("val/") and k.split("/")[-1].startswith("v") for k in splits.splits["val"].keys)
    assert [len(s) for s in splits.splits.values()] == [18, 9, 9]


# -- a CSV label file -----------------------------------------------------------------------------
def _label_folder(tmp_path, class_folder, rows_extra=None, header="file,category,burst"):
    """Every image flat in ``img/`` (no class folders), labels in ``meta/labels.csv`` (paths relative to
    it: ``../img/...``), a burst id per two consecutive images of a class."""
    root = tmp_path / "data"
    lines = [header]
    for cls in CLASSES:
        for i, path in enumerate(sorted((class_folder / cls).iterdir())):
            name = f"{cls[:2]}{path.name}"
            (root / "img").mkdir(parents=True, exist_ok=True)
            shutil.copy(path, root / "img" / name)
            lines.append(f"../img/{name},{cls},{cls}-{i // 2}" + (rows_extra(i) if rows_extra else ""))
    (root / "meta").mkdir()
    (root / "meta" / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


LABELS = LabelFile("meta/labels.csv", path_column="file", label_column="category", group_column="burst")


@pytest.mark.parametrize("kind", ["folder", "tar"])
def test_label_file_with_groups_keeps_each_burst_on_one_side(class_folder, tmp_path, kind):
    root = _label_folder(tmp_path, class_folder)
    location = root if kind == "folder" else _tar(root, tmp_path)
    splits = make_splits(open_source(location), 0.25, None, seed=0, test_fraction=0.2, labels=LABELS)
    assert splits.settings["layout"] == LABEL_LAYOUT and splits.classes == CLASSES
    side = {}
    for name, split in splits.splits.items():
        assert len(split) > 0
        for key, label in zip(split.keys, split.labels):
            assert key.startswith("img/") and key[4:6] == CLASSES[label][:2]
            burst = (key[4:6], int(key.split("/")[-1][2:6]) // 2)  # CIFAR names: 0001.jpg, 0002.jpg, ...
            side.setdefault(burst, set()).add(name)
    assert all(len(s) == 1 for s in side.values())  # no burst split between train, val and test
    assert sum(map(len, splits.splits.values())) == 30
    streamed = dict(open_source(location).stream(splits.splits["test"].keys))
    assert streamed[splits.splits["test"].keys[0]] == (root / splits.splits["test"].keys[0]).read_bytes()


def test_label_file_split_column_is_used_as_given(class_folder, tmp_path):
    root = _label_folder(tmp_path, class_folder, lambda i: "," + ("test" if i < 3 else "val" if i < 5 else "train"),
                         header="file,category,burst,subset")
    labels = LabelFile("meta/labels.csv", "file", "category", split_column="subset")
    splits = make_splits(open_source(root), 0.25, None, seed=0, labels=labels)
    assert [len(s) for s in splits.splits.values()] == [15, 6, 9] and splits.settings["val"] == "given"
    assert "test_fraction" not in splits.settings


@pytest.mark.parametrize("labels, message", [
    (LabelFile("meta/labels.csv", "path", "category"), "no column data.labels.path_column='path'; its columns are \\['file', 'category', 'burst'\\]"),
    (LabelFile("labels.csv", "file", "category"), "data.labels.file 'labels.csv' is not in it"),
])
def test_label_file_mistakes_are_named(class_folder, tmp_path, labels, message):
    root = _label_folder(tmp_path, class_folder)
    with pytest.raises(DatasetError, match=message):
        make_splits(open_source(root), 0.25, None, seed=0, labels=labels)


def test_label_file_row_that_is_not_an_image_names_its_line(class_folder, tmp_path):
    root = _label_folder(tmp_path, class_folder)
    with open(root / "meta" / "labels.csv", "a") as f:
        f.write("../img/missing.jpg,cat,x\n")
    with pytest.raises(DatasetError, match="line 32: '../img/missing.jpg' is not an image"):
        make_splits(open_source(root), 0.25, None, seed=0, labels=LABELS)


# -- reduced decoding ----------------------------------------------------------------------------
def _big_jpeg(size=(2048, 1536)) -> bytes:
    """A real CIFAR-10 image, upscaled to a photo's size, as JPEG."""
    from tests.conftest import CIFAR_ARCHIVE

    with tarfile.open(CIFAR_ARCHIVE, "r|gz") as tar:
        member = next(m for m in tar if m.isfile() and m.name.endswith(".jpg"))
        small = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
    out = io.BytesIO()
    small.resize(size, Image.BICUBIC).save(out, format="JPEG", quality=90)
    return out.getvalue()


def test_reduced_decode_takes_the_smallest_dct_scale_covering_the_resize():
    raw = _big_jpeg()
    assert tuple(read_rgb(raw).shape) == (3, 1536, 2048)
    assert tuple(read_rgb(raw, 256).shape) == (3, 384, 512)  # 1/4: 1/8 would give a short side of 192 < 256
    assert tuple(read_rgb(raw, 200).shape) == (3, 384, 512)  # 1/8 would give 192 < 200
    assert tuple(read_rgb(raw, 192).shape) == (3, 192, 256)  # 1/8
    portrait = io.BytesIO()
    Image.open(io.BytesIO(raw)).transpose(Image.Transpose.ROTATE_90).save(portrait, format="JPEG")
    assert tuple(read_rgb(portrait.getvalue(), 192).shape) == (3, 256, 192)
    full, reduced = decode_image(raw, GEOMETRY, "full"), decode_image(raw, GEOMETRY, "reduced")
    assert full.shape == reduced.shape == (3, 224, 224)
    assert (full.float() - reduced.float()).abs().mean() < 2.0  # a smooth image: the two decodes nearly agree


def test_reduced_decode_leaves_small_images_as_they_are(cifar_folder):
    for path in sorted(cifar_folder.rglob("*.jpg"))[:8]:
        raw = path.read_bytes()
        assert torch.equal(decode_image(raw, GEOMETRY, "reduced"), decode_image(raw, GEOMETRY, "full"))


def test_decode_mode_is_recorded_and_rebuilt_with_the_backbone(cifar_folder):
    from pipeline.backbone.backbones import load_backbone, load_recipe

    backbone = load_backbone("resnet18", None, 64)
    recipe = {"backbone": "resnet18", "weights": "none", "weights_id": backbone.weights_id, "input_size": 64,
              "init_seed": 0, "cut": None}
    reduced = backbone.preprocessing.decoding("reduced").to_json()
    assert '"decode": "reduced"' in reduced
    assert load_recipe(recipe | {"preprocessing": reduced}).preprocessing.decode == "reduced"
    old = backbone.preprocessing.to_json()  # as files written before the decode mode: nothing recorded
    assert "decode" not in old and load_recipe(recipe | {"preprocessing": old}).preprocessing.decode == "full"


def test_a_partial_extraction_of_the_other_decode_mode_is_discarded_not_mixed(class_folder, tmp_path, capsys):
    from pipeline.backbone.backbones import load_backbone
    from pipeline.backbone.extract import feature_spec
    from pipeline.store.features import PartialFeatures

    splits, backbone = make_splits(open_source(class_folder), 0.0, None, seed=0), load_backbone("resnet18", None, 64)
    spec, reduced = (feature_spec(splits, backbone, None, "float32", 0, "float32", decode) for decode in ("full", "reduced"))
    assert '"decode": "reduced"' in reduced.preprocessing and "decode" not in spec.preprocessing
    partial = PartialFeatures(tmp_path / "f.h5", spec, 8)
    partial.write_part("train", 0, np.zeros((8, *spec.shape), spec.storage_dtype), np.ones(8, bool))
    assert PartialFeatures(tmp_path / "f.h5", reduced, 8).done("train", 20) == set()
    assert "discarding partial extraction" in capsys.readouterr().out


# -- odd inputs ----------------------------------------------------------------------------------
def test_heic_without_a_plugin_names_the_file_and_what_to_install(class_folder, tmp_path):
    root = tmp_path / "photos"
    shutil.copytree(class_folder, root)
    (root / "cat" / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")  # the start of a phone's HEIC
    from pipeline.data.sources import image_extensions

    if ".heic" in image_extensions():
        pytest.skip("a HEIF plugin is installed: HEIC files are read")
    with pytest.raises(DatasetError, match="cannot read without a plugin, e.g. 'cat/IMG_0001.HEIC': install pillow-heif"):
        make_splits(open_source(root), 0.1, None, seed=0)
    from pipeline.data.images import image_paths

    with pytest.raises(DatasetError, match="IMG_0001.HEIC'.*install pillow-heif"):  # predict's listing of a folder
        image_paths([root])


def test_avif_is_read_when_pillow_has_it(class_folder, tmp_path):
    from PIL import features

    if not features.check("avif"):
        pytest.skip("this Pillow has no AVIF support")
    root = tmp_path / "photos"
    shutil.copytree(class_folder, root)
    jpeg = next((root / "cat").iterdir())
    Image.open(jpeg).save(root / "cat" / "phone.avif")
    source = open_source(root)
    splits = make_splits(source, 0.0, None, seed=0)
    keys = splits.splits["train"].keys + splits.splits["test"].keys
    assert "cat/phone.avif" in keys
    image = decode_image(dict(source.stream(["cat/phone.avif"]))["cat/phone.avif"], GEOMETRY)
    assert image.shape == (3, 224, 224) and image.float().std() > 10


def test_decompression_bomb_is_a_clear_message_or_skipped(class_folder, monkeypatch):
    source = open_source(class_folder)
    keys = [k for k in source.files() if k.startswith("cat/")][:4]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)  # 32 x 32 = 1024 pixels: above twice the limit
    with pytest.raises(BadImageError) as err:
        list(BatchStream(source, keys, 2, [0, 1], GEOMETRY))
    message = str(err.value)
    assert "cat/" in message and "too large to decode safely" in message and "MAX_IMAGE_PIXELS" in message, message
    assert "backbone.on_bad_image: skip" in message and "Traceback" not in message
    valid = torch.cat([v for _, _, v in BatchStream(source, keys, 2, [0, 1], GEOMETRY, skip_bad=True)])
    assert not valid.any()


def test_unreadable_image_points_to_on_bad_image_skip(class_folder, tmp_path):
    root = tmp_path / "photos"
    shutil.copytree(class_folder, root)
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    source = open_source(root)
    keys = [k for k in source.files() if k.startswith("cat/")]
    with pytest.raises(BadImageError, match="'cat/broken.jpg'.*set backbone.on_bad_image: skip"):
        list(BatchStream(source, keys, 4, range(3), GEOMETRY))


# -- end to end ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_dvc_repro_on_class_folders_and_a_label_file(tmp_path):
    """The whole pipeline on a class-folder tree (no split folders), then `dvc exp run` onto a CSV label
    file with groups in the same folder: real images through the real network and every stage."""
    import json

    from tests.test_pipeline_dvc import commit, dvc, make_project, ran

    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

    def edit(params):
        params["data"] |= {"source": "my_photos", "subset_per_class": None, "test_fraction": 0.25}
        params["backbone"] |= {"cut": None}
        params["finetune"], params["heads"] = {}, {}

    repo, env = make_project(tmp_path, edit)
    write_cifar_folder(tmp_path / "src", classes, {"train": 12})
    shutil.move(tmp_path / "src" / "train", repo / "my_photos")
    commit(repo, env, "my photos: one folder per class")
    out = dvc(repo, env, "repro")
    assert {"prepare", "extract", "train", "report", "leakage"} <= ran(out)
    assert "layout: class folders (<root>/<class>/<image>); test carved: 0.25 of each class" in out, out
    metrics = json.loads((repo / "evaluation" / "metrics.json").read_text())
    assert metrics["test"]["n"] == 30 and metrics["val"]["n"] == 10  # 3 and 1 of 12 per class
    assert metrics["test"]["top1"] > 0.3  # real ImageNet features on 10 classes (chance: 0.1)

    lines = ["image,class,shot"] + [f"{p.relative_to(repo / 'my_photos').as_posix()},{p.parent.name},{p.parent.name}-{i // 3}"
                                    for i, p in enumerate(sorted((repo / "my_photos").rglob("*.jpg")))]
    (repo / "my_photos" / "labels.csv").write_text("\n".join(lines) + "\n")
    commit(repo, env, "a label file")
    out = dvc(repo, env, "exp", "run", "-S", "data.labels.file=labels.csv", "-S", "data.labels.path_column=image",
              "-S", "data.labels.label_column=class", "-S", "data.labels.group_column=shot")
    assert "layout: label file (labels.csv: columns path = 'image', label = 'class', group = 'shot')" in out, out
    assert "groups ('shot') kept whole when carving" in out
    splits = json.loads((repo / "data" / "prepared" / "splits.json").read_text())
    sides = {}
    for name, split in splits["splits"].items():
        for key in split["keys"]:
            sides.setdefault(lines[[ln.split(",")[0] for ln in lines].index(key)].split(",")[2], set()).add(name)
    assert all(len(s) == 1 for s in sides.values()) and len(sides) == 40
    assert json.loads((repo / "evaluation" / "metrics.json").read_text())["test"]["top1"] > 0.3


def test_large_images_decode_in_workers_beside_a_narrower_forward_pass(class_folder, tmp_path):
    """Auto workers: none for CIFAR-10's 32 x 32, half the cores for photos (short side at least twice the
    resize); the features do not depend on it (within float rounding), and the thread count is restored."""
    import os

    import h5py

    from pipeline.backbone.backbones import load_backbone
    from pipeline.backbone.extract import OnePass, auto_workers, extract_features, feature_spec
    from pipeline.core.device import torch_device

    root = tmp_path / "photos"
    for path in sorted(class_folder.rglob("*.jpg"))[::5]:  # 6 real images, upscaled to 320 x 240
        (root / path.parent.name).mkdir(parents=True, exist_ok=True)
        Image.open(path).resize((320, 240), Image.BICUBIC).save(root / path.parent.name / path.name, quality=90)
    backbone, device = load_backbone("resnet18", None, 64), torch_device()
    geometry = backbone.preprocessing.geometry  # resize 73: 240 >= 2 x 73
    small, photos = (make_splits(open_source(p), 0.0, None, seed=0) for p in (class_folder, root))
    assert auto_workers(torch.device("cpu"), open_source(class_folder), small, geometry) == 0
    assert auto_workers(torch.device("cpu"), open_source(root), photos, geometry) == max(1, (os.cpu_count() or 1) // 2)
    threads, features = torch.get_num_threads(), {}
    for workers in (0, None):
        spec = feature_spec(photos, backbone, None, "float32", 0, "float32", "reduced")
        extract_features(photos, open_source(root), OnePass(backbone), {"pooled": (spec, tmp_path / f"{workers}.h5")},
                         batch_size=4, num_workers=workers, device=device, progress=False)
        with h5py.File(tmp_path / f"{workers}.h5") as h5:
            features[workers] = np.concatenate([h5[s]["features"][:] for s in ("train", "test")])
            assert '"decode": "reduced"' in h5.attrs["preprocessing"]
    assert torch.get_num_threads() == threads
    np.testing.assert_allclose(features[0], features[None], rtol=1e-4, atol=1e-5)
