"""Small file helpers shared by the stages: atomic writes, content hashes, reading YAML."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

import yaml

from pipeline.core.errors import ConfigError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds.

    A crash or an exception leaves ``path`` as it was (absent or the previous version), never
    half-written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fixed name: a run killed with SIGKILL leaves at most one stale temporary, which the next
    # run overwrites.
    tmp_path = path.parent / f".{path.stem}.tmp{path.suffix}"  # the suffix kept: some writers check it
    try:
        tmp_path.unlink(missing_ok=True)
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as err:
        if err.errno is not None and err.filename in (None, tmp_path, str(tmp_path)):
            # a failed write() names no file, a failed open() the temporary: name the file being written
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    finally:
        with contextlib.suppress(OSError):  # a read-only folder: the error above says so
            tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_files(out_dir: str | Path) -> Iterator[Path]:
    """Yield a staging folder beside ``out_dir``'s files; when the block succeeds, move every file
    written there into ``out_dir``: a set of outputs lands whole or not at all (a failure, a full disk,
    leaves the previous set as it was)."""
    import shutil

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        for f in sorted(staging.iterdir()):
            os.replace(f, out_dir / f.name)  # a rename in one folder: needs no new space
    except OSError as err:
        if err.errno is not None and isinstance(err.filename, str) and Path(err.filename).parent == staging:
            raise OSError(err.errno, err.strerror, str(out_dir / Path(err.filename).name)) from err  # the output's name
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; read it as the float everyone means."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"params file {path} does not exist")
    with path.open() as f:
        try:
            return yaml.load(f, Loader=_Loader)  # noqa: S506 (a SafeLoader)
        except yaml.YAMLError as err:
            raise ConfigError(f"params file {path} is not valid YAML: {err}") from None
