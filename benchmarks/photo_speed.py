"""Full-size photos against CIFAR-10's 32 x 32 JPEGs through the extraction, in one run.

    python benchmarks/photo_speed.py [--per-class 20] [--classes 10] [--cifar 640] [--folder DIR]
                                     [--workers auto 0 2] [--rounds 3] [--no-probe]

The photo folder (made once, kept in ``--folder``): the first ``--per-class`` CIFAR-10 training JPEGs of
each class, upscaled to 4000 x 3000 (bicubic) with monochrome film-grain noise (sigma 4 levels), saved as
JPEG quality 90 (about 2.3 MB each): a file that decodes like a 12-megapixel photo. It is a class-folder
layout (``<folder>/<class>/<image>``, no split folders), so prepare carves its test split.

Prints, all measured in this run:
- the floor: the rate at which all cores decode the photos with Pillow's ``draft`` to the smallest DCT
  scale whose short side still covers the resize (256 px for Lite0), one process per core;
- extraction images/s on the photos (``data.decode: reduced`` with each ``--workers``; ``full`` with the
  workers ``auto`` picks, in the first round only) and on ``--cifar`` CIFAR-10 JPEGs, and the photos' rate
  against the floor. The floor and the extractions alternate in ``--rounds`` rounds (this machine's speed
  drifts); the figures are over the totals;
- where the time goes: decode + resize per photo on one core (reduced and full), the forward pass per
  image on all cores;
- the cosine between each photo's features from the reduced and the full decode (in the pipeline's
  precision; in float32 on a sample, beside float32 against bfloat16 on the same pixels for scale), the
  difference of the network's input pixels, and (unless
  ``--no-probe``) the linear-probe accuracy both ways (5-fold cross-validated logistic regression on the
  same folds; the photos are upscaled CIFAR-10 images, the only real images available offline);
- the current leakage pixel check (``pipeline.stages.leakage.read_images``) and the mistakes pictures'
  thumbnails (``pipeline.reports.mistakes.load_thumbnails``) on the photo folder.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import sys
import tarfile
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract_speed import bare_forward  # noqa: E402

from pipeline.backbone.backbones import load_backbone  # noqa: E402
from pipeline.backbone.extract import OnePass, auto_workers, extract_features, feature_spec, tune_allocator  # noqa: E402
from pipeline.core.device import describe_cpu, resolve_precision, torch_device  # noqa: E402
from pipeline.data.images import decode_image, draft, read_rgb, reduced_to, resize_crop  # noqa: E402
from pipeline.data.sources import Split, Splits, make_splits, open_source  # noqa: E402

ARCHIVE = Path("data/cifar10-jpeg.tar.gz")
PHOTO_SIZE = (4000, 3000)
GRAIN = 4.0


def make_photos(folder: Path, per_class: int, n_classes: int, seed: int = 0) -> list[Path]:
    """The photo folder (kept: existing photos are not made again); returns its photos."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    taken: dict[str, int] = {}
    out = []
    with tarfile.open(ARCHIVE, "r|gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if len(parts) != 3 or parts[0] != "train" or not member.isfile():
                continue
            cls = parts[1]
            if cls not in taken and len(taken) == n_classes or taken.get(cls, 0) >= per_class:
                continue
            taken[cls] = taken.get(cls, 0) + 1
            path = folder / cls / parts[2]
            out.append(path)
            if path.exists():
                continue
            raw = tar.extractfile(member).read()
            image = Image.open(io.BytesIO(raw)).convert("RGB").resize(PHOTO_SIZE, Image.BICUBIC)
            grain = rng.standard_normal((PHOTO_SIZE[1], PHOTO_SIZE[0], 1), dtype=np.float32) * GRAIN
            pixels = np.clip(np.asarray(image) + grain, 0, 255).astype(np.uint8)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".part")
            Image.fromarray(pixels).save(tmp, format="JPEG", quality=90)
            tmp.rename(path)
    return out


def _draft_decode(args: tuple[str, int]) -> None:
    from PIL import Image

    path, cover = args
    with Image.open(path) as image:
        draft(image, cover)
        image.load()


def decode_floor(paths: list[Path], cover: int) -> float:
    """Images/s of all cores decoding ``paths`` with ``draft`` to the smallest scale covering ``cover``."""
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        pool.map(_draft_decode, [(str(paths[0]), cover)] * (os.cpu_count() or 1))  # workers started
        start = time.perf_counter()
        pool.map(_draft_decode, [(str(p), cover) for p in paths], chunksize=1)
        return len(paths) / (time.perf_counter() - start)


def extract(splits: Splits, backbone, decode: str, workers: int | None, batch_size: int, device) -> tuple[float, np.ndarray]:
    """(images/s, features in split order) of one extraction of every image of ``splits``."""
    precision = resolve_precision("auto", device)  # the pipeline's default
    spec = feature_spec(splits, backbone, "DEFAULT", "float32", init_seed=0, precision=precision, decode=decode)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        extract_features(splits, open_source(splits.source), OnePass(backbone), {"pooled": (spec, Path(tmp) / "f.h5")},
                         batch_size=batch_size, num_workers=workers, device=device, progress=False)
        seconds = time.perf_counter() - start
        with h5py.File(Path(tmp) / "f.h5") as h5:
            features = np.concatenate([h5[name]["features"][:] for name in splits.splits if name in h5])
    return sum(map(len, splits.splits.values())) / seconds, features


def decode_ms(source, keys: list[str], geometry, decode: str) -> float:
    """Milliseconds per image of decode + resize + crop in this process (the extraction's main-process path)."""
    raws = dict(source.stream(keys))
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        for key in keys:
            resize_crop([read_rgb(raws[key], reduced_to(geometry, decode))], geometry)
        return 1000 * (time.perf_counter() - start) / len(keys)
    finally:
        torch.set_num_threads(os.cpu_count() or 1)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def probe_accuracy(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=2000))
    return float(cross_val_score(model, features, labels, cv=folds).mean())


def only(splits: Splits, n: int | None = None) -> Splits:
    """``splits`` as one split (train + val + test, in the source's streaming order), its first ``n`` images."""
    position = {k: i for i, k in enumerate(open_source(splits.source).files())}
    rows = sorted((position[k], k, label) for s in splits.splits.values() for k, label in zip(s.keys, s.labels))[:n]
    return replace(splits, splits={"train": Split([k for _, k, _ in rows], [label for _, _, label in rows])})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--cifar", type=int, default=640, help="CIFAR-10 JPEGs extracted in the same run")
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "fg-transfer-photos")
    parser.add_argument("--workers", nargs="+", default=["auto", "0", "2"], help="decoding processes; auto: the pipeline's choice")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the floor and the extractions")
    parser.add_argument("--no-probe", action="store_true")
    args = parser.parse_args()

    tune_allocator()
    device = torch_device()
    start = time.perf_counter()
    paths = make_photos(args.folder, args.per_class, args.classes)
    print(f"photo folder {args.folder}: {len(paths)} JPEGs of {PHOTO_SIZE[0]} x {PHOTO_SIZE[1]}, "
          f"{np.mean([p.stat().st_size for p in paths]) / 1e6:.2f} MB on average (made or found in {time.perf_counter() - start:.0f} s)")
    print(f"CPU: {describe_cpu()}; {os.cpu_count()} cores; device {device}")
    backbone = load_backbone("efficientnet_lite0", "DEFAULT", 224)
    geometry = backbone.preprocessing.geometry
    photos = make_splits(open_source(args.folder), 0.1, None, seed=0)
    everything = only(photos)
    cifar = only(make_splits(open_source(ARCHIVE), 0.0, None, seed=0), args.cifar)
    cifar_src, photo_src = open_source(ARCHIVE), open_source(args.folder)
    extract(only(photos, args.batch_size), backbone, "reduced", 0, args.batch_size, device)  # warm-up

    # this machine's speed drifts: the floor and each extraction alternate in rounds, figures over the totals
    floor_time, floor_images = 0.0, 0
    seconds: dict[tuple[str, str, str], float] = {}
    images: dict[tuple[str, str, str], int] = {}
    features = {}
    runs = [("photos", everything, "reduced", w) for w in args.workers] + [("cifar", cifar, "reduced", w) for w in args.workers]
    for r in range(args.rounds):
        rate = decode_floor(paths, geometry.resize_size)
        floor_time, floor_images = floor_time + len(paths) / rate, floor_images + len(paths)
        line = [f"round {r + 1}: floor {rate:.1f}"]
        for what, splits, decode, workers in runs + ([("photos", everything, "full", "auto")] if r == 0 else []):
            rate, feats = extract(splits, backbone, decode, None if workers == "auto" else int(workers), args.batch_size, device)
            n = len(splits.splits["train"])
            seconds[what, decode, workers] = seconds.get((what, decode, workers), 0.0) + n / rate
            images[what, decode, workers] = images.get((what, decode, workers), 0) + n
            if what == "photos" and workers == "auto":
                features[decode] = feats
            line.append(f"{what} {decode} {workers}: {rate:.1f}")
        print(", ".join(line) + " images/s", flush=True)
    floor = floor_images / floor_time

    print(f"\nthe floor: all {os.cpu_count()} cores decoding the photos with draft (short side >= {geometry.resize_size}): "
          f"{floor:.1f} images/s")
    print(f"auto workers: photos {auto_workers(device, photo_src, photos, geometry)}, "
          f"CIFAR-10 {auto_workers(device, cifar_src, cifar, geometry)}")
    print(f"\n{'images':<10}{'decode':<10}{'workers':<9}{'images/s':>9}{'/ floor':>9}")
    for (what, decode, workers), t in seconds.items():
        rate = images[what, decode, workers] / t
        against = f"{rate / floor:9.2f}" if what == "photos" else ""
        print(f"{what:<10}{decode:<10}{workers:<9}{rate:9.1f}{against}")

    keys = everything.splits["train"].keys[:: max(1, len(paths) // 24)]
    precision = resolve_precision("auto", device)
    forward = 1000 / bare_forward(backbone, args.batch_size, 3, device, precision)
    reduced, full = decode_ms(photo_src, keys, geometry, "reduced"), decode_ms(photo_src, keys, geometry, "full")
    print(f"\nwhere the time goes (per image): decode + resize on one core: reduced {reduced:.1f} ms, full {full:.1f} ms, "
          f"CIFAR-10 {decode_ms(cifar_src, cifar.splits['train'].keys[:256], geometry, 'reduced'):.2f} ms; "
          f"forward pass ({precision}) on {torch.get_num_threads()} threads {forward:.1f} ms")

    a, b = features["reduced"], features["full"]
    cosine = cosines(a, b)
    print(f"\nfeatures ({precision}), reduced against full decode, cosine per photo: min {cosine.min():.4f}, "
          f"median {np.median(cosine):.4f}, mean {cosine.mean():.4f} ({len(cosine)} photos)")
    inputs = {mode: torch.stack([decode_image(raw, geometry, mode) for _, raw in photo_src.stream(keys)]) for mode in ("full", "reduced")}
    gap = (inputs["full"].float() - inputs["reduced"].float()).abs()
    print(f"the network's input (224 x 224 x 3), reduced against full decode: mean absolute difference {gap.mean():.2f} "
          f"levels of 255, largest {gap.max():.0f} ({len(keys)} photos)")
    with torch.inference_mode():
        exact = {mode: backbone(x.contiguous(memory_format=torch.channels_last)).numpy() for mode, x in inputs.items()}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rounded = backbone(inputs["full"].contiguous(memory_format=torch.channels_last)).float().numpy()
    for label, c in (("float32, reduced against full decode", cosines(exact["reduced"], exact["full"])),
                     ("for scale: the same full-decode pixels in bfloat16 against float32", cosines(rounded, exact["full"]))):
        print(f"features, {label}: cosine min {c.min():.4f}, median {np.median(c):.4f} ({len(keys)} photos)")
    if not args.no_probe:
        labels = np.array(everything.splits["train"].labels)
        print(f"linear probe (5-fold cross-validated logistic, {len(labels)} photos, {args.classes} classes): "
              f"reduced {probe_accuracy(a, labels):.2%}, full {probe_accuracy(b, labels):.2%}")

    from pipeline.core.config import LeakageParams
    from pipeline.reports.mistakes import load_thumbnails
    from pipeline.stages.leakage import read_images

    start = time.perf_counter()
    read_images(str(args.folder), everything.splits["train"].keys, LeakageParams().pixel_size)
    leak = len(paths) / (time.perf_counter() - start)
    test = photos.splits["test"].keys
    start = time.perf_counter()
    load_thumbnails(photos, set(test))
    thumbs = len(test) / (time.perf_counter() - start)
    print(f"\nstages that decode the photos themselves (full decode, one process): leakage pixel check "
          f"{leak:.1f} images/s ({len(paths)} photos), mistakes thumbnails {thumbs:.1f} images/s ({len(test)} test photos)")


if __name__ == "__main__":
    main()
