"""The leakage check against CIFAR-10 test-train pairs labelled by eye near its decision boundary.

    python benchmarks/leakage_boundary.py [--pairs evaluation/leakage/pairs.csv] [--params params.yaml]
                                          [--labels benchmarks/leakage_boundary_labels.csv] [--picture out.png]

``leakage_boundary_labels.csv`` holds 168 test-train pairs of the complete default run (EfficientNet-Lite0
candidates, the check of 2026-12), drawn at random, 24 from each band of the decision margin
(:func:`pipeline.analyses.leakage.margin`) from -0.3 to 0.1 in steps of 0.05 (the bands nearest the
decision narrower), and each looked at enlarged (the candidate mirrored where its best alignment was):
``same`` (the same photograph, shifted, rescaled, cropped, recoloured, blurred), ``different`` (another
photograph: another object, pose or moment) or ``unsure`` (not decidable at 32 px). Planted copies say
what the check tolerates; these say where CIFAR-10's own copies and look-alikes lie against its measures.

Reads a finished leakage stage's pairs.csv (the pairs it lists: those past the coarse pass) and prints,
for the labelled pairs it lists: the decision (confirmed, possible, rejected) against the labels, the labels
per band of the margin (and beyond the bands on either side: a later check moves pairs), and
for each measure how often a ``same`` pair scores above a ``different`` one (1: always; ties count half)
with the 10th percentile of the ``same`` pairs and the 90th of the ``different`` ones (a gap: the first
above the second). ``--picture`` draws the labelled pairs by label, green confirmed, blue possible, orange
rejected.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's pipeline, also when another one is installed

import numpy as np  # noqa: E402

from pipeline.analyses.leakage import margin, plot_pairs, read_pairs  # noqa: E402
from pipeline.core import layout  # noqa: E402
from pipeline.core.config import load_params  # noqa: E402

LABELS = Path(__file__).with_name("leakage_boundary_labels.csv")
KINDS = ("same", "different", "unsure")
BANDS = (-0.3, -0.2, -0.15, -0.1, -0.05, 0.0, 0.05, 0.1)


def read_labels(path: Path) -> dict[tuple[str, str], str]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    bad = [r for r in rows if r["label"] not in KINDS]
    if bad:
        raise SystemExit(f"{path}: label {bad[0]['label']!r} of {bad[0]['id']} is not one of {KINDS}")
    return {(r["id"], r["nearest_id"]): r["label"] for r in rows}


def ranks_above(same: list[float], different: list[float]) -> float:
    """How often a ``same`` value is above a ``different`` one (ties half): the area under the ROC curve."""
    s, d = np.asarray(same)[:, None], np.asarray(different)[None]
    return float((s > d).mean() + 0.5 * (s == d).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=Path, default=layout.LEAKAGE_PAIRS)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--labels", type=Path, default=LABELS)
    ap.add_argument("--picture", type=Path, help="draw the labelled pairs by label to this PNG")
    args = ap.parse_args(argv)

    lk = load_params(args.params).leakage
    labels = read_labels(args.labels)
    listed = {(p.id, p.nearest_id): p for p in read_pairs(args.pairs) if p.split_pair == "test-train"}
    found = [(listed[key], label) for key, label in labels.items() if key in listed]
    print(f"{len(found)} of the {len(labels)} labelled pairs are in {args.pairs} "
          f"(the others not candidates or dropped by the coarse pass)")

    print("\nlabel       confirmed  possible  rejected")
    for kind in KINDS:
        mine = [p for p, label in found if label == kind]
        print(f"{kind:10s} {sum(p.confirmed for p in mine):10d} {sum(p.possible for p in mine):9d} "
              f"{sum(not (p.confirmed or p.possible) for p in mine):9d}")

    print("\nmargin band      same  different  unsure")
    for low, high in zip((-np.inf, *BANDS), (*BANDS, np.inf)):  # and beyond the bands on either side
        mine = [label for p, label in found if low <= margin(p, lk) < high]
        print(f"[{low:+.2f}, {high:+.2f})  {mine.count('same'):5d} {mine.count('different'):10d} {mine.count('unsure'):7d}")

    measures = {"margin": lambda p: margin(p, lk), "match": lambda p: p.match, "detail": lambda p: p.detail,
                "colour": lambda p: p.colour, "cosine": lambda p: p.cosine}
    print("\nmeasure   same above different   same 10th pct   different 90th pct")
    for name, of in measures.items():
        values = {kind: [of(p) for p, label in found if label == kind and not math.isnan(of(p))]
                  for kind in ("same", "different")}
        if not values["same"] or not values["different"]:
            print(f"{name:8s} (too few values)")
            continue
        print(f"{name:8s} {ranks_above(values['same'], values['different']):21.3f} "
              f"{np.percentile(values['same'], 10):15.3f} {np.percentile(values['different'], 90):20.3f}")

    if args.picture:
        from pipeline.data.images import thumbnails
        from pipeline.data.sources import Splits
        from pipeline.stages.leakage import THUMBNAIL

        groups = [(kind, sorted((p for p, label in found if label == kind), key=lambda p: -margin(p, lk)))
                  for kind in KINDS]
        images = thumbnails(Splits.load(layout.SPLITS).source, {k for _, ps in groups for p in ps
                                                                for k in (p.id, p.nearest_id)}, THUMBNAIL)
        plot_pairs(groups, images, args.picture, f"labelled by eye: {', '.join(KINDS)}, by margin; "
                   "green: confirmed, blue: possible, orange: rejected")
        print(f"\n-> {args.picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
