"""The errors the pipeline reports to users: each message names the bad value and what is valid.

Every class can be built from its message alone, so that an error raised in a DataLoader worker
process survives being re-raised in the main process.
"""

from __future__ import annotations


class PipelineError(ValueError):
    """Base class: the CLI prints these as one clear message, without a traceback."""


class ConfigError(PipelineError):
    """A params value is missing, of the wrong type, or not one of the valid choices."""


class DatasetError(PipelineError):
    """The dataset is not usable as given (layout, classes, splits, images)."""


class BadImageError(DatasetError):
    """An image that cannot be read or decoded; the message names it."""

    @classmethod
    def of(cls, key: str, location: str, reason: str) -> BadImageError:
        return cls(f"cannot read image {key!r} in {location}: {reason}")


class BackboneError(PipelineError):
    """An unknown backbone, unusable weights, or weights that cannot be had offline."""


class FeatureStoreError(PipelineError):
    """A feature file is missing, truncated, corrupt, or does not match the current settings."""
