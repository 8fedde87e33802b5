"""Using what was trained: f and g together, for prediction on new images and for export.

:func:`load_trained` rebuilds the backbone from the feature file's recorded recipe, checks that it is
the same network (weights identity, preprocessing), and pairs it with a trained head that was fitted
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

from pipeline.backbone.backbones import FeatureExtractor, load_recipe
from pipeline.core.errors import PipelineError
from pipeline.core.fileutil import atomic_path
from pipeline.data.images import decode_image
from pipeline.heads.base import Head, load_head
from pipeline.store.features import FeatureStore

EXPORT_META = "transfer_model.json"


@dataclass
class TrainedModel:
    backbone: FeatureExtractor
    head: Head
    classes: list[str]
    storage_dtype: str = "float32"
    """The feature file's dtype: features are rounded to it, as the head saw them in training."""
    precision: str = "float32"
    """The feature file's arithmetic (float32 or bfloat16): features are computed as extract computed them."""

    def predict_proba(self, images: torch.Tensor) -> np.ndarray:
        """uint8 images (B, 3, S, S) -> class probabilities (B, n_classes), the pipeline's own path (calibrated
        when the head is)."""
        with torch.inference_mode():
            features = cached_features(self.backbone, images, getattr(torch, self.storage_dtype), self.precision)
        return self.head.predict_proba(features.numpy())


def cached_features(backbone: FeatureExtractor, images: torch.Tensor, storage_dtype: torch.dtype,
                    precision: str) -> torch.Tensor:
    """The features the head saw in training: computed in the file's precision (as extract computed them),
    rounded to its storage dtype, as float32."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
        features = backbone(images)
    return features.to(storage_dtype).float()


def load_trained(features_path: str | Path, head_path: str | Path) -> TrainedModel:
    """The backbone recorded in the feature file, rebuilt and verified, with the trained head."""
    head, meta = load_head(head_path)
    with FeatureStore(features_path) as store:
        store.check_head(meta, head_path)
        spec = store.spec
    return TrainedModel(load_recipe(spec.backbone_recipe()), head, list(spec.classes), spec.storage_dtype, spec.precision)


# -- prediction ---------------------------------------------------------------------------
def predict(model: TrainedModel, paths: list[Path], top_k: int = 5, batch_size: int = 32) -> Iterator[dict]:
    """Yield, in the order of ``paths``, ``{"path", "top": [{"class", "score"}, ...]}`` for each readable
    image, scores being probabilities, and ``{"path", "error"}`` for each image that cannot be read (the
    others go on)."""
    if top_k < 1 or batch_size < 1:
        raise PipelineError(f"top_k and batch_size must be positive integers, got {top_k} and {batch_size}")
    geometry, decode = model.backbone.preprocessing.geometry, model.backbone.preprocessing.decode
    k = min(top_k, len(model.classes))
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        results: list[dict] = []
        images: dict[int, torch.Tensor] = {}
        for i, p in enumerate(chunk):
            try:
                images[i] = decode_image(p.read_bytes(), geometry, decode)  # as extract decoded
                results.append({"path": str(p)})
            except Exception as err:  # PIL raises many types for corrupt data
                results.append({"path": str(p), "error": f"cannot read image: {type(err).__name__}: {err}"})
        if images:
            proba = model.predict_proba(torch.stack(list(images.values())))
            for i, row in zip(images, proba):
                results[i]["top"] = [{"class": model.classes[c], "score": float(row[c])} for c in np.argsort(-row)[:k]]
        yield from results


# -- export -------------------------------------------------------------------------------
class TransferModel(nn.Module):
    """g(f(x)): uint8 images (B, 3, S, S), resized and centre-cropped, -> class scores (logits), divided by
    the head's temperature when it is calibrated: their softmax is the head's probabilities."""

    def __init__(self, backbone: FeatureExtractor, head: Head, storage_dtype: str = "float32", precision: str = "float32"):
        super().__init__()
        self.backbone = backbone
        self.head = head.to_torch().cpu()
        self.storage_dtype = getattr(torch, storage_dtype)
        self.precision = precision
        self.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(cached_features(self.backbone, images, self.storage_dtype, self.precision))


def export(model: TrainedModel, out_path: str | Path) -> Path:
    """Write f and g as one ``torch.export`` program (dynamic batch size) with its metadata."""
    from torch.export import Dim

    module = TransferModel(model.backbone, model.head, model.storage_dtype, model.precision)
    size = model.backbone.preprocessing.geometry.crop_size
    example = torch.zeros(2, 3, size, size, dtype=torch.uint8)
    with torch.inference_mode():
        program = torch.export.export(module, (example,), dynamic_shapes=({0: Dim("batch", min=1, max=4096)},))
    meta = {
        "classes": model.classes,
        "input": f"uint8 tensor (batch, 3, {size}, {size}), RGB, resized and centre-cropped as below",
        "preprocessing": model.backbone.preprocessing.describe(),
        "output": ("class scores (logits); softmax gives probabilities" if model.head.temperature is None else
                   f"class scores (logits) divided by the calibrated temperature {model.head.temperature:.6g}; "
                   "softmax gives calibrated probabilities"),
        "temperature": model.head.temperature,
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
