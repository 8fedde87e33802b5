"""The errors the pipeline reports to users: each message names the bad value and what is valid."""


class PipelineError(ValueError):
    """Base class: the CLI prints these as one clear message, without a traceback."""


class ConfigError(PipelineError):
    """A params value is missing, of the wrong type, or not one of the valid choices."""


class DatasetError(PipelineError):
    """The dataset is not usable as given (layout, classes, splits, images)."""


class BadImageError(DatasetError):
    def __init__(self, key: str, location: str, reason: str):
        super().__init__(f"cannot read image {key!r} in {location}: {reason}")
        self.key = key


class BackboneError(PipelineError):
    """An unknown backbone, unusable weights, or weights that cannot be had offline."""


class FeatureStoreError(PipelineError):
    """A feature file is missing, truncated, corrupt, or does not match the current settings."""
