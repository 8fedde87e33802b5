"""The errors the pipeline reports to users: each message names the bad value and what is valid.

Every class can be built from its message alone, so that an error raised in a DataLoader worker
process survives being re-raised in the main process.
"""

from __future__ import annotations

import errno
import sys
from typing import Callable


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


WHAT_TO_DO = {
    errno.ENOSPC: "free some disk space and run the stage again",
    errno.EDQUOT: "free some disk space (your quota is used up) and run the stage again",
    errno.EROFS: "the file system is mounted read-only: make it writable and run the stage again",
    errno.EACCES: "check that you may write (or read) there and run the stage again",
    errno.EPERM: "check that you may write (or read) there and run the stage again",
}


def message(err: BaseException) -> str:
    """The one line a user sees for an error: its message, also when raised in a DataLoader worker."""
    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError) and err.strerror:
        # disk full, read-only folder, ...
        text = f"{err.strerror} ({err.filename or 'writing the outputs'})"
        return f"{text}: {WHAT_TO_DO[err.errno]}" if err.errno in WHAT_TO_DO else text
    text = str(err).strip()
    if "Original Traceback" in text:  # re-raised from a worker process: keep the original message
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text


def guarded(run: Callable[[], object]) -> int:
    """Run a command and return its exit status (what it returns when that is an int, else 0); a
    PipelineError (or an OS error: a missing file, a full disk) is one line on stderr (:func:`message`) and
    exit status 2, not a traceback."""
    try:
        status = run()
    except (PipelineError, OSError) as err:
        print(f"error: {message(err)}", file=sys.stderr)
        return 2
    return status if isinstance(status, int) else 0
