"""Using what was trained: f and g together, for prediction on new images and for export.

:func:`load_trained` rebuilds the backbone from the feature file's recorded settings, checks that it
is the same network (weights identity, preprocessing), and pairs it with a trained head that was fitted
on that very feature file. :func:`export` writes f and g as one ``torch.export`` program that maps a
uint8 image batch, already resized and centre-cropped to the input size, to class scores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from pipeline.backbones import FeatureExtractor, load_backbone
from pipeline.data import decode_image
from pipeline.errors import FeatureStoreError, PipelineError
from pipeline.features import FeatureStore
from pipeline.finetune import FinetuneHead
from pipeline.heads import Head, LinearModelHead, MlpHead, load_head

EXPORT_META = "transfer_model.json"


@dataclass
class TrainedModel:
    backbone: FeatureExtractor
    head: Head
    classes: list[str]
    storage_dtype: str = "float32"
    """The feature file's dtype: features are rounded to it, as the head saw them in training."""

    def predict_proba(self, images: torch.Tensor) -> np.ndarray:
        """uint8 images (B, 3, S, S) -> class probabilities (B, n_classes), the pipeline's own path."""
        with torch.inference_mode():
            features = self.backbone(images).to(getattr(torch, self.storage_dtype)).float().numpy()
        return self.head.predict_proba(features)


def load_trained(features_path: str | Path, head_path: str | Path) -> TrainedModel:
    """The backbone recorded in the feature file, rebuilt and verified, with the trained head."""
    head, meta = load_head(head_path)
    with FeatureStore(features_path) as store:
        store.check_head(meta, head_path)
        spec = store.spec
    weights = None if spec.weights == "none" else spec.weights
    backbone = load_backbone(spec.backbone, weights, spec.input_size, seed=spec.split_seed)
    if spec.cut:  # a fine-tuned head: the frozen part is the backbone below the cut
        backbone, _ = backbone.cut_at(spec.cut)
    rebuilt = json.dumps(backbone.preprocessing.describe(), sort_keys=True)
    if backbone.weights_id != spec.weights_id or rebuilt != spec.preprocessing:
        raise FeatureStoreError(
            f"the backbone recorded in {features_path} cannot be rebuilt identically here: weights "
            f"{spec.weights_id} recorded, {backbone.weights_id} loaded; preprocessing {spec.preprocessing} "
            f"recorded, {rebuilt} now (checkpoint or package changed since extraction?)"
        )
    return TrainedModel(backbone, head, list(spec.classes), spec.storage_dtype)


# -- prediction ---------------------------------------------------------------------------
def image_paths(paths: list[str | Path]) -> list[Path]:
    """Files as given; folders searched recursively for images (sorted)."""
    from PIL import Image

    extensions = {e.lower() for e in Image.registered_extensions()}
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in extensions)
        elif p.is_file():
            out.append(p)
        else:
            raise PipelineError(f"{p} is neither an image file nor a folder")
    return out


def predict(model: TrainedModel, paths: list[Path], top_k: int = 5, batch_size: int = 32) -> Iterator[dict]:
    """Yield ``{"path", "top": [{"class", "score"}, ...]}`` for each image, scores being probabilities."""
    geometry = model.backbone.preprocessing.geometry
    k = min(top_k, len(model.classes))
    for start in range(0, len(paths), batch_size):
        batch = paths[start : start + batch_size]
        images = []
        for p in batch:
            try:
                images.append(decode_image(p.read_bytes(), geometry))
            except Exception as err:
                raise PipelineError(f"cannot read image {p}: {type(err).__name__}: {err}") from None
        proba = model.predict_proba(torch.stack(images))
        for p, row in zip(batch, proba):
            top = np.argsort(-row)[:k]
            yield {"path": str(p), "top": [{"class": model.classes[i], "score": float(row[i])} for i in top]}


# -- export -------------------------------------------------------------------------------
class HeadModule(nn.Module):
    """A fitted head as torch: its feature normalisation, then a linear layer or the MLP."""

    def __init__(self, head: Head):
        super().__init__()
        if not isinstance(head, (LinearModelHead, MlpHead)):
            raise PipelineError(
                f"head kind {head.kind!r} cannot be exported as a torch module (it is not linear and not the MLP); "
                "exportable kinds: logistic, linear, ridge, nearest_centroid, mlp, finetune. Use `python -m pipeline predict`"
            )
        norm = head.normalizer
        self.mode = norm.mode
        dim = head.coef.shape[1] if isinstance(head, LinearModelHead) else head.net_state["0.weight"].shape[1]
        mean = norm.mean if norm.mode == "standardize" else np.zeros(dim, np.float32)
        scale = norm.scale if norm.mode == "standardize" else np.ones(dim, np.float32)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))
        if isinstance(head, LinearModelHead):
            self.classifier = nn.Linear(dim, head.n_classes)
            self.classifier.weight.data = torch.as_tensor(head.coef, dtype=torch.float32)
            self.classifier.bias.data = torch.as_tensor(head.intercept, dtype=torch.float32)
        else:
            self.classifier = head._module(dim)
            self.classifier.load_state_dict({k: torch.as_tensor(v) for k, v in head.net_state.items()})

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.mode == "l2":
            features = features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)
        else:
            features = (features - self.mean) / self.scale
        return self.classifier(features)


class TransferModel(nn.Module):
    """g(f(x)): uint8 images (B, 3, S, S), resized and centre-cropped, -> class scores (logits)."""

    def __init__(self, backbone: FeatureExtractor, head: Head, storage_dtype: str = "float32"):
        super().__init__()
        self.backbone = backbone
        self.head = head.module().cpu() if isinstance(head, FinetuneHead) else HeadModule(head)
        self.storage_dtype = getattr(torch, storage_dtype)
        self.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images).to(self.storage_dtype).float())


def export(model: TrainedModel, out_path: str | Path) -> Path:
    """Write f and g as one ``torch.export`` program (dynamic batch size) with its metadata."""
    from torch.export import Dim

    from pipeline.fileutil import atomic_path

    module = TransferModel(model.backbone, model.head, model.storage_dtype)
    size = model.backbone.preprocessing.geometry.crop_size
    example = torch.zeros(2, 3, size, size, dtype=torch.uint8)
    with torch.inference_mode():
        program = torch.export.export(module, (example,), dynamic_shapes=({0: Dim("batch", min=1, max=4096)},))
    meta = {
        "classes": model.classes,
        "input": f"uint8 tensor (batch, 3, {size}, {size}), RGB, resized and centre-cropped as below",
        "preprocessing": model.backbone.preprocessing.describe(),
        "output": "class scores (logits); softmax gives probabilities",
        "head": model.head.kind,
        "backbone": model.backbone.name + (f" (fine-tuned from {model.backbone.cut} up)" if model.backbone.cut else ""),
        "weights_id": model.backbone.weights_id,
    }
    with atomic_path(out_path) as tmp:
        torch.export.save(program, tmp, extra_files={EXPORT_META: json.dumps(meta)})
    return Path(out_path)


def load_exported(path: str | Path) -> tuple[nn.Module, dict]:
    extra = {EXPORT_META: ""}
    program = torch.export.load(path, extra_files=extra)
    return program.module(), json.loads(extra[EXPORT_META])
