"""Prediction on new images and export of f + g as one module, against the pipeline's own path."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline.core.config import parse_params
from pipeline.core.errors import FeatureStoreError, PipelineError
from pipeline.data.images import image_paths
from pipeline.model import export, load_exported, load_trained, predict
from pipeline.stages import evaluate, extract, prepare, train
from pipeline.store.features import FeatureStore


@pytest.fixture(scope="module")
def trained(cifar_folder, tmp_path_factory):
    """A small real run: prepare, extract (ResNet-18, random init, 64 px), train and evaluate heads."""
    out = tmp_path_factory.mktemp("run")
    params = parse_params({
        "data": {"source": str(cifar_folder), "val_fraction": 0.25},
        "backbone": {"name": "resnet18", "weights": None, "input_size": 64, "batch_size": 8},
        "heads": {"mlp": {"kind": "mlp", "mlp": {"epochs": 3, "hidden": 32}}, "knn": {"kind": "knn"}},
    })
    prepare.run(params, out / "splits.json")
    extract.run(params, out / "splits.json", out / "f.h5", progress=False)
    train.run(params, out / "f.h5", out / "splits.json", out / "logistic.npz")
    evaluate.run(out / "f.h5", out / "logistic.npz", out / "eval")
    for name in ("mlp", "knn"):
        train.run(params, out / "f.h5", out / "splits.json", out / f"{name}.npz", key=f"heads.{name}")
    return out, params


def test_predict_agrees_with_evaluate_on_the_test_images(trained, cifar_folder):
    out, _ = trained
    model = load_trained(out / "f.h5", out / "logistic.npz")
    with FeatureStore(out / "f.h5") as store:
        ids = store.ids("test")
    with open(out / "eval" / "test_predictions.csv") as f:
        evaluated = [row["predicted"] for row in csv.DictReader(f)]
    results = list(predict(model, [cifar_folder / key for key in ids], top_k=2))
    assert [r["top"][0]["class"] for r in results] == evaluated
    assert all(len(r["top"]) == 2 and r["top"][0]["score"] >= r["top"][1]["score"] for r in results)


@pytest.mark.parametrize("head_file", ["logistic.npz", "mlp.npz"])
def test_exported_module_gives_the_pipeline_scores(trained, tmp_path, head_file):
    out, _ = trained
    model = load_trained(out / "f.h5", out / head_file)
    path = export(model, tmp_path / "model.pt2")
    module, meta = load_exported(path)
    assert meta["classes"] == ["airplane", "cat", "ship"] and meta["preprocessing"]["crop_size"] == 64
    from pipeline.data.images import decode_image
    from pipeline.data.sources import open_source

    with FeatureStore(out / "f.h5") as store:
        keys, (features, _) = store.ids("test"), store.load("test")
    source = open_source(json.loads((out / "splits.json").read_text())["source"])
    images = torch.stack([decode_image(raw, model.backbone.preprocessing.geometry) for _, raw in source.stream(keys)])
    with torch.inference_mode():
        exported = module(images).numpy()
    pipeline_scores = model.head.decision_function(features)  # from the cached features
    np.testing.assert_allclose(exported, pipeline_scores, rtol=1e-3, atol=1e-3)
    assert (exported.argmax(1) == pipeline_scores.argmax(1)).all()


def test_knn_head_is_refused_for_export_with_the_exportable_kinds(trained, tmp_path):
    out, _ = trained
    with pytest.raises(PipelineError, match="knn head cannot be exported.*predict.*export a linear, ridge"):
        export(load_trained(out / "f.h5", out / "knn.npz"), tmp_path / "m.pt2")


def test_head_trained_on_other_features_is_refused(trained, cifar_folder, tmp_path):
    out, params = trained
    other = params.model_copy(update={"backbone": params.backbone.model_copy(update={"input_size": 32})})
    extract.run(other, out / "splits.json", tmp_path / "other.h5", progress=False)
    with pytest.raises(FeatureStoreError, match="trained on other features"):
        load_trained(tmp_path / "other.h5", out / "logistic.npz")


def test_predict_cli_json(trained, cifar_folder):
    out, _ = trained
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "predict", str(cifar_folder / "test" / "ship"), "--json", "--top-k", "3",
         "--features", str(out / "f.h5"), "--head", str(out / "logistic.npz")],
        capture_output=True, text=True, check=True,
    )
    rows = json.loads(result.stdout)
    assert [r["path"] for r in rows] == [str(p) for p in image_paths([cifar_folder / "test" / "ship"])]
    assert all({t["class"] for t in r["top"]} <= {"airplane", "cat", "ship"} and len(r["top"]) == 3 for r in rows)


def test_head_side_never_imports_the_backbone_or_the_images(trained, tmp_path):
    """The f/g rule: train and evaluate of a pooled head see only the feature store. They import neither
    the backbone nor the image modules nor torchvision; a scikit-learn head not even torch. (PIL is
    loaded by matplotlib for the plots, so it is no sign here.)"""
    out, params = trained
    code = (
        "import json, sys\n"
        "from pipeline.stages import evaluate, train\n"
        "from pipeline.core.config import parse_params\n"
        f"params = parse_params(json.loads({json.dumps(json.dumps(params.model_dump()))}))\n"
        f"train.run(params, {str(out / 'f.h5')!r}, {str(out / 'splits.json')!r}, {str(tmp_path / 'h.npz')!r})\n"
        f"evaluate.run({str(out / 'f.h5')!r}, {str(tmp_path / 'h.npz')!r}, {str(tmp_path / 'eval')!r})\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'PIL', 'pipeline'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    imported = set(json.loads(result.stdout.strip().splitlines()[-1]))
    assert (tmp_path / "eval" / "metrics.json").exists()
    assert "pipeline.heads.linear" in imported and "pipeline.store.features" in imported  # it did run the head
    for forbidden in ("pipeline.backbone.backbones", "pipeline.data.images", "pipeline.data.sources", "pipeline.backbone.extract",
                      "pipeline.data.preprocessing", "torchvision", "torch"):
        assert forbidden not in imported, f"the head side imported {forbidden}"


def run_predict(trained, *args):
    out, _ = trained
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "predict", *args, "--features", str(out / "f.h5"),
         "--head", str(out / "logistic.npz")],
        capture_output=True, text=True,
    )


def test_predict_cli_reports_unreadable_images_and_predicts_the_others(trained, cifar_folder, tmp_path):
    import shutil

    out, _ = trained
    folder = tmp_path / "photos"
    shutil.copytree(cifar_folder / "test" / "ship", folder / "ships")
    shutil.copytree(cifar_folder / "test" / "cat", folder / "cats" / "more")
    (folder / "ships" / "0001-broken.jpg").write_bytes(b"not a jpeg at all")
    (folder / "ships" / "._0000.jpg").write_bytes(b"\x00\x05\x16\x07 resource fork")  # macOS AppleDouble
    (folder / "notes.txt").write_text("not an image")
    good = [p for p in image_paths([folder]) if "broken" not in p.name]
    assert len(good) == 8 and not any(p.name.startswith(".") for p in good)
    expected = {r["path"]: r["top"] for r in predict(load_trained(out / "f.h5", out / "logistic.npz"), good, 3)}

    result = run_predict(trained, str(folder), "--json", "--top-k", "3", "--batch-size", "2")
    assert result.returncode == 1, result.stderr
    rows = json.loads(result.stdout)
    assert [r["path"] for r in rows] == [str(p) for p in image_paths([folder])]  # in the order given
    got = {r["path"]: r["top"] for r in rows if "top" in r}
    assert got.keys() == expected.keys()
    for path, top in got.items():  # the same as predicted without the bad image, in other batches
        assert [t["class"] for t in top] == [t["class"] for t in expected[path]]
        assert [t["score"] for t in top] == pytest.approx([t["score"] for t in expected[path]], abs=1e-5)
    [bad] = [r for r in rows if "error" in r]
    assert bad["path"].endswith("0001-broken.jpg") and bad["error"].startswith("cannot read image")
    assert "error: 1 of 9 images could not be read" in result.stderr

    result = run_predict(trained, str(folder))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stdout.splitlines()) == 8
    assert f"{folder / 'ships' / '0001-broken.jpg'}: error: cannot read image" in result.stderr


def test_predict_cli_on_a_folder_without_images(trained, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("no image here")
    for folder in ("empty", "texts"):
        result = run_predict(trained, str(tmp_path / folder))
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.startswith(f"error: no image found in {tmp_path / folder}"), result.stderr
        assert result.stdout == ""


@pytest.mark.parametrize("option, value", [("--top-k", "-1"), ("--top-k", "0"), ("--batch-size", "0"),
                                           ("--batch-size", "two")])
def test_predict_cli_refuses_bad_numbers(trained, cifar_folder, option, value):
    result = run_predict(trained, str(cifar_folder / "test" / "ship"), option, value)
    assert result.returncode == 2 and "Traceback" not in result.stderr and result.stdout == ""
    assert f"argument {option}: must be a positive integer, got {value}" in result.stderr, result.stderr


@pytest.mark.parametrize("top_k, batch_size", [(0, 4), (-1, 4), (2, 0)])
def test_predict_refuses_non_positive_numbers(trained, cifar_folder, top_k, batch_size):
    out, _ = trained
    model = load_trained(out / "f.h5", out / "logistic.npz")
    with pytest.raises(PipelineError, match=f"must be positive integers, got {top_k} and {batch_size}"):
        list(predict(model, image_paths([cifar_folder / "test" / "cat"]), top_k, batch_size))
