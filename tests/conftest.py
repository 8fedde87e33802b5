"""Shared fixtures: small but real image datasets taken from the shipped CIFAR-10 archive."""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
"""Headless Chromium, for the pages the project writes (.ci/run installs it; the tests that need it skip
without it)."""


def chromium_dom(page: Path, profile: Path, screenshot: Path | None = None, height: int = 2200) -> str:
    """The DOM of ``page`` after headless Chromium ran its scripts, with every host name unresolvable (no
    network: nothing can load from a server); with ``screenshot``, also a PNG of it, 1280 px wide."""
    import subprocess

    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--virtual-time-budget=10000", "--host-resolver-rules=MAP * ~NOTFOUND", "--hide-scrollbars"]
    if screenshot is not None:
        subprocess.run([*flags, f"--window-size=1280,{height}", f"--screenshot={screenshot}", page.as_uri()],
                       capture_output=True, timeout=120, check=True)
    result = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout
CIFAR_ARCHIVE = ROOT / "data" / "cifar10-jpeg.tar.gz"


def subprocess_env() -> dict[str, str]:
    """The environment for a test's subprocess: it imports this checkout's ``pipeline``, whatever its
    working directory (an editable install may point to another checkout)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def write_cifar_folder(dest: Path, classes: list[str], per_class: dict[str, int]) -> Path:
    """Copy the first ``per_class[split]`` CIFAR-10 JPEGs of each class into an image folder."""
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(CIFAR_ARCHIVE, "r|gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if len(parts) != 3 or not member.isfile():
                continue
            split, cls, name = parts
            if cls not in classes or counts.get((split, cls), 0) >= per_class.get(split, 0):
                continue
            counts[(split, cls)] = counts.get((split, cls), 0) + 1
            out = dest / split / cls / name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(tar.extractfile(member).read())
    return dest


@pytest.fixture(scope="session")
def cifar_folder(tmp_path_factory) -> Path:
    """3 classes of real CIFAR-10 images: 8 train and 4 test images each."""
    return write_cifar_folder(
        tmp_path_factory.mktemp("cifar") / "images", ["airplane", "cat", "ship"], {"train": 8, "test": 4}
    )


def write_image(path: Path, rng: np.random.Generator, size=(20, 16), mode="RGB", fmt=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path, format=fmt)


def interrupt_after(n_parts: int, extract, monkeypatch) -> list[tuple[str, int]]:
    """Call ``extract()``, interrupting it once ``n_parts`` parts are committed; return those parts."""
    from pipeline.store.features import PartialFeatures

    original, written = PartialFeatures.write_part, []

    def crash(self, split, index, features, valid):
        if len(written) == n_parts:
            raise KeyboardInterrupt("simulated interruption")
        written.append((split, index))
        original(self, split, index, features, valid)

    with monkeypatch.context() as patch:
        patch.setattr(PartialFeatures, "write_part", crash)
        with pytest.raises(KeyboardInterrupt):
            extract()
    return written


def small_pooled_cache(out: Path, classes: list[str], raw: dict) -> tuple[Path, Any]:
    """Real pooled features of ``classes`` (40 training and 15 test CIFAR-10 images each) in ``out``,
    extracted with the params ``raw`` (its data.source set to that image folder); returns (out, params)."""
    from pipeline.core.config import parse_params
    from pipeline.stages import extract, prepare

    folder = write_cifar_folder(out / "images", classes, {"train": 40, "test": 15})
    params = parse_params({**raw, "data": {**raw.get("data", {}), "source": str(folder)}})
    prepare.run(params, out / "splits.json")
    extract.run(params, out / "splits.json", out / "pooled.h5", progress=False)
    return out, params


def with_section(params, section: str, **values):
    """``params`` with keys of one section replaced (validated again)."""
    from pipeline.core.config import parse_params

    raw = params.model_dump()
    raw[section] = {**raw[section], **values}
    return parse_params(raw)


QUICK = {  # the kinds that train for epochs, kept short in tests
    "mlp": {"epochs": 3, "hidden": 32},
}


@pytest.fixture(scope="session")
def caches(cifar_folder, tmp_path_factory):
    """Real pooled features and a real cut cache (ResNet-18, random init, 64 px) of 3 CIFAR classes, with
    every head kind configured (``heads.<kind>``, ``finetune.top``), and a second pooled file made with
    another seed (other features of the same images)."""
    from pipeline.core.config import parse_params
    from pipeline.core.head_registry import kinds
    from pipeline.stages import extract, prepare

    out = tmp_path_factory.mktemp("caches")
    raw = {
        "data": {"source": str(cifar_folder), "val_fraction": 0.25},
        "backbone": {"name": "resnet18", "weights": None, "input_size": 64, "batch_size": 8, "cut": "layer4"},
        "heads": {kind: {"kind": kind, kind: QUICK.get(kind, {})} for kind in kinds("pooled")},
        "finetune": {"top": {"kind": "finetune", "finetune": {"epochs": 1, "batch_size": 8}}},
    }
    params = parse_params(raw)
    prepare.run(params, out / "splits.json")
    extract.run(params, out / "splits.json", out / "pooled.h5", out / "cut.h5", progress=False)
    other = parse_params({**raw, "seed": 1})
    prepare.run(other, out / "other-splits.json")
    extract.run(other, out / "other-splits.json", out / "other.h5", progress=False)
    return out, params


