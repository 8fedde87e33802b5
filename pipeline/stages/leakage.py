"""Stage leakage (data side): near-copies between the splits, found on the pooled features, confirmed on the pixels.

For every test image its nearest training image, validation image and other test image, and for every
validation image its nearest training image, by cosine similarity of the cached pooled features
(exact, in blocks: :func:`pipeline.leakage.nearest_neighbours`). The pairs at or above
``leakage.threshold`` are candidates; the images of each candidate are read from the dataset and
compared at ``leakage.pixel_size`` pixels a side, which confirms it or not. Writes, as one set,
evaluation/leakage/pairs.csv (every candidate), summary.json (counts, a DVC metric) and pairs.png (the
closest pairs of each split pair, side by side). It reads images, so it is data side: no head-side
module imports it; the compare stage reads only the ids in pairs.csv.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from pipeline import layout
from pipeline.config import Params
from pipeline.errors import BadImageError, DatasetError
from pipeline.features import FeatureStore, expected_spec
from pipeline.fileutil import atomic_files, write_json
from pipeline.leakage import (candidates, check_pixels, pairs_of, plot_pairs, search, small_grey, split_pair_name,
                              summarise, write_pairs)

SHOWN = 8
"""Closest pairs of each split pair in the picture, above the threshold or not."""
THUMBNAIL = 96
"""Largest side of an image in the picture, in pixels."""


def read_images(source_location: str, keys: Iterable[str], size: int,
                thumbnails: Iterable[str] = ()) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Decode the images ``keys`` of the dataset (one pass over it): (id -> the reduced grey image of the
    pixel check, id -> an RGB thumbnail for the picture, for the ids of ``thumbnails``)."""
    from PIL import Image

    from pipeline.images import read_rgb
    from pipeline.sources import open_source

    source = open_source(source_location)
    wanted, shown = set(keys) | set(thumbnails), set(thumbnails)
    order = [key for key, _, _ in source.entries() if key in wanted]
    if missing := wanted - set(order):
        raise DatasetError(f"{source_location} no longer holds {len(missing)} images of the feature file "
                           f"({sorted(missing)[:5]}): run the prepare and extract stages again (dvc repro)")
    small, thumbs = {}, {}
    for key, raw in source.stream(order):
        try:
            image = read_rgb(raw).permute(1, 2, 0).numpy()
        except Exception as err:  # PIL raises many types for corrupt data
            raise BadImageError.of(key, source_location, f"{type(err).__name__}: {err}") from None
        small[key] = small_grey(image, size)
        if key in shown:
            thumb = Image.fromarray(image)
            thumb.thumbnail((THUMBNAIL, THUMBNAIL))
            thumbs[key] = np.asarray(thumb)
    return small, thumbs


def run(params: Params, features_path: str | Path, splits_path: str | Path, out_dir: str | Path = layout.LEAKAGE,
        device=None) -> dict:
    """Search, check and write the outputs; returns the summary."""
    from pipeline.sources import Splits

    lk = params.leakage
    start = time.perf_counter()
    with FeatureStore(features_path) as store:
        store.check(expected_spec(params, splits_path, "pooled"))
        ids = {s: store.ids(s) for s in store.splits}
        found = search(store, lk.block_rows, device)
    searched_s = time.perf_counter() - start
    listed, shown = [], []
    for (query, base), nearest in found.items():
        name = split_pair_name(query, base)
        listed += candidates(ids[query], ids[base], nearest, name, lk.threshold)
        shown.append((name, pairs_of(ids[query], ids[base], nearest, name, limit=SHOWN)))
    shown_ids = {k for _, pairs in shown for p in pairs for k in (p.id, p.nearest_id)}
    small, thumbs = read_images(Splits.load(splits_path).source, {k for p in listed for k in (p.id, p.nearest_id)},
                                lk.pixel_size, shown_ids)
    listed = check_pixels(listed, small, lk.pixel_tolerance, lk.threshold)
    shown = [(name, check_pixels(pairs, small, lk.pixel_tolerance, lk.threshold)) for name, pairs in shown]
    summary = summarise(listed, {split_pair_name(q, b): len(ids[q]) for q, b in found}, lk.threshold,
                        lk.pixel_size, lk.pixel_tolerance)
    title = (f"closest pairs of each split pair: cosine of the pooled features ({store.spec.backbone}), pixel "
             f"distance at {lk.pixel_size} px\ngreen: near-copy (cos >= {lk.threshold}, px <= {lk.pixel_tolerance:g}); "
             "orange: cos above, pixels differ; grey: below the threshold")
    out_dir = Path(out_dir)
    with atomic_files(out_dir) as staging:
        write_pairs(listed, staging / layout.LEAKAGE_PAIRS.name)
        write_json(staging / layout.LEAKAGE_SUMMARY.name, summary)
        plot_pairs(shown, thumbs, staging / layout.LEAKAGE_PICTURE.name, title, lk.threshold)
    for name, counts in summary["pairs"].items():
        print(f"{name}: {counts['searched']} images searched, {counts['candidates']} candidates at cosine >= "
              f"{lk.threshold}, {counts['confirmed']} confirmed by the pixels")
    print(f"test images with a near-copy in train: {summary['test_with_near_copy_in_train']}; in train or val "
          f"(left out of compare's second test figure): {summary['test_removed']}")
    print(f"leakage: search {searched_s:.1f} s, all {time.perf_counter() - start:.1f} s -> {out_dir}")
    return summary


def main(argv: list[str] | None = None) -> int:
    from pipeline.stages._cli import parser, run_stage

    args = parser(__doc__).parse_args(argv)
    return run_stage(args, lambda params, _: run(params, layout.FEATURES["pooled"], layout.SPLITS))


if __name__ == "__main__":
    sys.exit(main())
