"""A backbone's preprocessing: geometry (resize, crop), decode mode and normalisation.

Plain data, no torch: the backbone chooses it (:mod:`pipeline.backbone.backbones`), the feature file
records it (:meth:`Preprocessing.to_json`), the image side applies its geometry
(:mod:`pipeline.data.images`), the backbone applies its normalisation on the device. It sits on the data
side, below the backbone, so that the image code needs nothing of the backbone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

DECODES = ("full", "reduced")
"""How JPEGs are decoded before the resize: at full size, or at the smallest DCT scale (1/2, 1/4, 1/8)
whose short side still covers the resize (``data.decode``)."""


@dataclass(frozen=True)
class ImageGeometry:
    """How an image becomes a fixed-size uint8 tensor: resize the short side, then centre-crop."""

    resize_size: int
    crop_size: int
    interpolation: str = "bilinear"


@dataclass(frozen=True)
class Preprocessing:
    geometry: ImageGeometry
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    """Pixel statistics on the [0, 1] scale: x_norm = (x / 255 - mean) / std."""
    decode: str = "full"
    """One of :data:`DECODES`; recorded only when not ``full``, so that feature files written before the
    decode mode existed (all decoded at full size) read as ``full``."""

    def describe(self) -> dict:
        out = {**asdict(self.geometry), "mean": list(self.mean), "std": list(self.std)}
        return out | ({"decode": self.decode} if self.decode != "full" else {})

    def decoding(self, decode: str) -> Preprocessing:
        """The same preprocessing with JPEGs decoded ``decode``."""
        if decode not in DECODES:
            raise ValueError(f"decode must be one of {list(DECODES)}, got {decode!r}")
        return replace(self, decode=decode)

    def to_json(self) -> str:
        """The canonical text recorded in a feature file and compared when the backbone is rebuilt."""
        return json.dumps(self.describe(), sort_keys=True)


def recorded_decode(preprocessing_json: str) -> str:
    """The decode mode a feature file's preprocessing records (``full`` when it records none)."""
    return json.loads(preprocessing_json).get("decode", "full")
