"""How the leakage stage's cosine threshold was chosen: the pixel check across cosine bands, and the pairs around it.

    python benchmarks/leakage_threshold.py [--features data/features/pooled.h5] [--splits data/prepared/splits.json]
                                           [--source DATA] [--threshold 0.95] [--out docs/img]

Runs the leakage search (every split pair), then, for every pair at or above ``--floor`` (well below the
threshold), reads both images and computes the pixel distance of the stage. Prints, per band of cosine
similarity, how many pairs there are and how many the pixel check confirms (``--tolerance``), with the
median pixel distance; then draws the test-train pairs just above and just below ``--threshold`` side
by side (``<out>/leakage-above.png``, ``<out>/leakage-below.png``) and the confirmed pairs closest to the
threshold from above (``<out>/leakage-confirmed.png``). ``--source`` defaults to the source recorded in
the splits file (relative to the working directory).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's pipeline, also when another one is installed

from pipeline.features import FeatureStore  # noqa: E402
from pipeline.leakage import check_pixels, pairs_of, plot_pairs, search, split_pair_name  # noqa: E402
from pipeline.sources import Splits  # noqa: E402
from pipeline.stages.leakage import read_images  # noqa: E402

BANDS = [0.80, 0.85, 0.88, 0.90, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0001]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path, default=Path("data/features/pooled.h5"))
    parser.add_argument("--splits", type=Path, default=Path("data/prepared/splits.json"))
    parser.add_argument("--source", default=None)
    parser.add_argument("--threshold", type=float, default=0.85)
    parser.add_argument("--tolerance", type=float, default=12.0)
    parser.add_argument("--pixel-size", type=int, default=16)
    parser.add_argument("--floor", type=float, default=BANDS[0])
    parser.add_argument("--shown", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="folder of the pictures (none: no pictures)")
    args = parser.parse_args()

    start = time.perf_counter()
    with FeatureStore(args.features) as store:
        ids = {s: store.ids(s) for s in store.splits}
        found = search(store, 4096)
        backbone = store.spec.backbone
    print(f"search: {time.perf_counter() - start:.1f} s")
    pairs = []
    for (query, base), nearest in found.items():
        pairs += pairs_of(ids[query], ids[base], nearest, split_pair_name(query, base), min_cosine=args.floor)
    keys = {k for p in pairs for k in (p.id, p.nearest_id)}
    source = args.source or Splits.load(args.splits).source
    start = time.perf_counter()
    small, thumbs = read_images(source, keys, args.pixel_size, keys)
    print(f"read {len(keys)} images of {len(pairs)} pairs at cosine >= {args.floor}: "
          f"{time.perf_counter() - start:.1f} s")
    pairs = check_pixels(pairs, small, args.tolerance, threshold=-1.0)  # confirmed: the pixels alone
    names = [split_pair_name(q, b) for q, b in found]
    print(f"\npairs per cosine band: all / within {args.tolerance:g} grey levels at {args.pixel_size} px "
          f"(median pixel distance)")
    print("cosine        " + "".join(f"{n:>24s}" for n in names))
    for low, high in zip(BANDS[:-1], BANDS[1:]):
        cells = []
        for name in names:
            band = [p for p in pairs if p.split_pair == name and low <= p.cosine < high]
            med = f"({np.median([p.pixel_distance for p in band]):.1f})" if band else ""
            cells.append(f"{len(band):>6} / {sum(p.confirmed for p in band):<6} {med:>8s}")
        print(f"[{low:.2f}, {min(high, 1):.2f}{')' if high < 1 else ']'}  " + "".join(f"{c:>24s}" for c in cells))
    for t in (0.80, 0.82, 0.85, 0.88, 0.90, 0.92, 0.95):
        test_train = [p for p in pairs if p.split_pair == "test-train" and p.cosine >= t]
        print(f"threshold {t:.2f}: test-train candidates {len(test_train)}, confirmed "
              f"{sum(p.confirmed for p in test_train)}")
    if args.out is None:
        return
    test_train = [p for p in pairs if p.split_pair == "test-train"]  # closest first
    above = [p for p in test_train if p.cosine >= args.threshold][-args.shown:][::-1]  # the lowest above, upwards
    below = [p for p in test_train if p.cosine < args.threshold][: args.shown]
    confirmed_low = [p for p in test_train if p.cosine >= args.threshold and p.confirmed][-args.shown:][::-1]
    confirmed_below = [p for p in test_train if p.cosine < args.threshold and p.confirmed][: args.shown]
    args.out.mkdir(parents=True, exist_ok=True)
    what = f"{backbone} pooled features, CIFAR-10 test (top) and its nearest training image (bottom)"
    check = f"pixel distance: mean |grey difference| at {args.pixel_size} px; green: <= {args.tolerance:g}"
    plot_pairs([("test-train", above)], thumbs, args.out / "leakage-above.png",
               f"just above the threshold {args.threshold}: {what}\n{check}", args.threshold)
    plot_pairs([("test-train", below)], thumbs, args.out / "leakage-below.png",
               f"just below the threshold {args.threshold}: {what}\n{check}", args.threshold)
    plot_pairs([("test-train", confirmed_low), ("test-train", confirmed_below)], thumbs,
               args.out / "leakage-confirmed.png",
               f"pixel-confirmed pairs nearest the threshold {args.threshold}, from above (first two rows) and "
               f"from below (last two)\n{what}", args.threshold)
    print(f"pictures -> {args.out}")


if __name__ == "__main__":
    main()
