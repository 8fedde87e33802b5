"""Stage leakage (data side): near-copies between the splits, found on the pooled features, confirmed on the pixels.

For every test image its ``leakage.neighbours`` nearest training images, validation images and other test images,
and for every validation image its nearest training images, by cosine similarity of the cached pooled features
(exact, in blocks: :func:`pipeline.analyses.leakage.search`), and as many again (``leakage.pixel_neighbours``) by
tiny grey thumbnails of the pixels (:func:`pipeline.analyses.leakage.pixel_search`, which reads every image). The
images of these candidates are read from the dataset and aligned in grey at ``leakage.pixel_size`` pixels
(:func:`pipeline.analyses.leakage.match`), which confirms a pair or not. Writes, as one set,
evaluation/leakage/pairs.csv (every candidate checked at full size), summary.json (counts) and pairs.png (the test
pairs nearest the decision and nearest the lower edge of the band of possible near-copies, on both sides of each).
It reads images, so it is data side: no head-side module imports it; the compare stage reads only the ids in
pairs.csv.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from pipeline.analyses.leakage import (
    COLOUR_DETAIL,
    COLOUR_MATCH,
    MAX_DIFFERING,
    Pair,
    candidates,
    check_pairs,
    colour_square,
    grey_square,
    margin,
    pixel_search,
    plain_background_note,
    plot_pairs,
    search,
    search_thumbnails,
    split_pair_name,
    strong_point,
    summarise,
    union,
    write_pairs,
)
from pipeline.core import layout
from pipeline.core.config import LeakageParams, Params
from pipeline.core.fileutil import atomic_files, write_json
from pipeline.data.images import read_images, thumbnails
from pipeline.store.features import FeatureStore, expected_spec

SHOWN = 12
"""Test pairs (against train or val) in the picture on each side of each edge: of the decision, and of the
possible near-copies' band below it (:func:`boundary`)."""
THUMBNAIL = 96
"""Largest side of an image in the picture, in pixels."""


def picture_title(lk: LeakageParams, backbone: str) -> str:
    """The title of pairs.png: what each caption's numbers are and the decision, the colour rule only when it is on."""
    strong = strong_point(lk)
    grey = f"differ <= {MAX_DIFFERING:.1%} and inside >= {strong[1]}"
    if lk.min_colour is None:
        colour, rule = "colour: not measured (leakage.min_colour is null)", ""
        plain = f"on a plain background also {grey}"
    else:
        colour = "colour: colour layouts' cosine there (-: too little colour)"
        rule = f", or colour >= {lk.min_colour} and match >= {COLOUR_MATCH} and detail >= {COLOUR_DETAIL}"
        plain = (f"on a plain background also, in colour, inside >= {lk.min_detail} or colour >= {lk.min_colour} and "
                 f"inside >= {COLOUR_DETAIL}, in grey {grey}")
    pixels = f", or of its {lk.pixel_neighbours} by the pixels (pixels #rank)" if lk.pixel_neighbours else ""
    band = (f"blue: possible (within {lk.possible_margin} of confirming by the measure nearest its threshold), "
            if lk.possible_margin else "")
    return (f"test images (top) and a candidate near-copy (bottom): one of its {lk.neighbours} nearest by the pooled "
            f"features ({backbone}), #rank, cosine{pixels}\nmatch: gradient fields' cosine at the best alignment at "
            f"{lk.pixel_size} px (M: mirrored), detail: gradient directions' cosine there, {colour}; both on a plain "
            f"background: inside: the detail over the object's inside, differ: the pixels differing after a fine "
            f"alignment (grey)\ngreen: confirmed (match >= {lk.threshold} and detail >= {lk.min_detail}, or match >= "
            f"{strong[0]} and detail >= {strong[1]}{rule}; {plain}), {band}orange: rejected")


def boundary(pairs: list[Pair], lk: LeakageParams, shown: int = SHOWN) -> list[tuple[str, list[Pair]]]:
    """The test pairs against train or val nearest each edge (:func:`pipeline.analyses.leakage.margin`), each
    nearest its edge first: with a band (``leakage.possible_margin``), ``shown`` on each side of each edge (the
    confirmed and the possible ones nearest the decision, the possible and the rejected ones nearest the band's
    lower edge); without one, twice ``shown`` on each side of the decision."""
    tested = [(margin(p, lk), p) for p in pairs if p.split_pair in ("test-train", "test-val")]
    up = sorted((x for x in tested if x[1].confirmed), key=lambda x: (x[0], x[1].id))
    down = sorted((x for x in tested if not x[1].confirmed), key=lambda x: (-x[0], x[1].id))
    confirmed, below = [p for _, p in up], [p for _, p in down if not p.possible]
    if not lk.possible_margin:  # one edge: twice as many on each side, the same picture's size
        return [("confirmed,\nnearest the\nthreshold", confirmed[: 2 * shown]),
                ("rejected,\nnearest the\nthreshold", below[: 2 * shown])]
    band = [p for _, p in down if p.possible]
    return [("confirmed,\nnearest the\nthreshold", confirmed[:shown]),
            ("possible,\nnearest the\nthreshold", band[:shown]),
            ("possible,\nnearest the\nband's edge", band[::-1][:shown]),
            ("rejected,\nnearest the\nband's edge", below[:shown])]


def find(store: FeatureStore, source: str, lk: LeakageParams, device=None) -> tuple[list[Pair], dict, dict]:
    """Search the feature file, read the candidates' images from ``source`` and check them: (the checked
    pairs, split pair -> (query images searched, candidates), the seconds of each step)."""
    start = time.perf_counter()
    ids = {s: store.ids(s) for s in store.splits}
    found = search(store, lk.neighbours, lk.block_rows, device)
    seconds = {"search": time.perf_counter() - start}
    by_features = {(query, base): candidates(ids[query], ids[base], neighbours, split_pair_name(query, base),
                                             lk.min_cosine)
                   for (query, base), neighbours in found.items()}
    del found
    start = time.perf_counter()
    if lk.pixel_neighbours:  # every image may be a candidate of the pixel search
        wanted = {k for split in {s for pair in by_features for s in pair} for k in ids[split]}
    else:
        wanted = {k for listed in by_features.values() for p in listed for k in (p.id, p.nearest_id)}
    grey, colour = {}, None if lk.min_colour is None else {}
    for key, image in read_images(source, wanted, cover=lk.pixel_size):
        grey[key] = grey_square(image, lk.pixel_size)
        if colour is not None:
            colour[key] = colour_square(image, lk.pixel_size // 2)
    seconds.update({"reading": time.perf_counter() - start, **({"pixel search": 0.0} if lk.pixel_neighbours else {}),
                    "pixel check": 0.0})
    checked, searched, thumbs = [], {}, {}
    for (query, base), listed in by_features.items():
        name = split_pair_name(query, base)
        if lk.pixel_neighbours:
            start = time.perf_counter()
            for split in (query, base):
                if split not in thumbs:
                    thumbs[split] = search_thumbnails(np.stack([grey[k] for k in ids[split]]))
            nearest = pixel_search(thumbs[query], thumbs[base][0], lk.pixel_neighbours, query == base, device)
            listed = union(listed, candidates(ids[query], ids[base], nearest, name, pixels=True))
            seconds["pixel search"] += time.perf_counter() - start
        searched[name] = (len(ids[query]), len(listed))
        start = time.perf_counter()
        checked += check_pairs(listed, grey, colour, lk)
        seconds["pixel check"] += time.perf_counter() - start
    checked.sort(key=lambda p: (p.split_pair, -p.match, p.id, p.nearest_id))
    return checked, searched, seconds


def run(params: Params, features_path: str | Path, splits_path: str | Path, out_dir: str | Path = layout.LEAKAGE,
        device=None) -> dict:
    """Search, check and write the outputs; returns the summary."""
    from pipeline.data.sources import Splits

    lk = params.leakage
    start = time.perf_counter()
    source = Splits.load(splits_path).source
    with FeatureStore(features_path) as store:
        store.check(expected_spec(params, splits_path, "pooled"))
        backbone = store.spec.backbone
        checked, searched, seconds = find(store, source, lk, device)
    summary = summarise(checked, searched, lk.model_dump(exclude={"block_rows"}))  # the settings of the result
    shown = boundary(checked, lk)
    thumbs = thumbnails(source, {k for _, pairs in shown for p in pairs for k in (p.id, p.nearest_id)}, THUMBNAIL)
    out_dir = Path(out_dir)
    with atomic_files(out_dir) as staging:
        write_pairs(checked, staging / layout.LEAKAGE_PAIRS.name)
        write_json(staging / layout.LEAKAGE_SUMMARY.name, summary)
        plot_pairs(shown, thumbs, staging / layout.LEAKAGE_PICTURE.name, picture_title(lk, backbone))
    for name, counts in summary["pairs"].items():
        print(f"{name}: {counts['searched']} images searched, {counts['candidates']} candidates, {counts['checked']} "
              f"aligned at full size, {counts['confirmed']} confirmed ({counts['mirrored']} mirrored)")
    print(f"test images with a near-copy in train: {summary['test_with_near_copy_in_train']}; in train or val "
          f"(left out of compare's second test figure): {summary['test_removed']}; with a possible one only (left out "
          f"of its third too): {summary['test_possible']}")
    if note := plain_background_note(summary):
        print(note)
    print(f"leakage: {', '.join(f'{step} {s:.1f} s' for step, s in seconds.items())}, all "
          f"{time.perf_counter() - start:.1f} s -> {out_dir}")
    return summary


def main(argv: list[str] | None = None) -> int:
    from pipeline.core.cli import parser, run_stage

    args = parser(__doc__).parse_args(argv)
    return run_stage(args, lambda params, _: run(params, layout.FEATURES["pooled"], layout.SPLITS))


if __name__ == "__main__":
    sys.exit(main())
