"""A backbone's preprocessing, owned by the backbone side: geometry (resize, crop) and normalisation.

Plain data, no torch: the feature file records it (:meth:`Preprocessing.to_json`), the image side
applies its geometry (:mod:`pipeline.images`), the backbone applies its normalisation on the device.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


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

    def describe(self) -> dict:
        return {**asdict(self.geometry), "mean": list(self.mean), "std": list(self.std)}

    def to_json(self) -> str:
        """The canonical text recorded in a feature file and compared when the backbone is rebuilt."""
        return json.dumps(self.describe(), sort_keys=True)
