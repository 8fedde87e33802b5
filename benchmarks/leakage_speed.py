"""Wall time and peak memory of the leakage stage, before (a git revision) and after, in one run.

    python benchmarks/leakage_speed.py --features data/features/pooled.h5 --splits data/prepared/splits.json
    python benchmarks/leakage_speed.py --proxy /tmp/leakage-proxy --splits data/prepared/splits.json

Runs the work of the leakage stage twice on the same feature file and the same images, each in a fresh
process: ``--before`` (default 260d6eb, the stage before issue 29: nearest neighbour only, a cosine
threshold, the grey difference at 16 px) from ``git archive`` of that revision, and this checkout (its k
nearest, the pixel alignment). Each process loads torch and warms it up, notes its peak resident memory,
then searches the features (and the pixels), reads the images of the candidates (every image, with the pixel
search) and of the pairs it draws from the dataset and checks them; it reports the seconds of each step and the
peak memory the work added. This checkout runs twice: without the pixel search (``leakage.pixel_neighbours``
0) and with the defaults.

``--proxy DIR`` is for when no feature file of the whole dataset is at hand: it writes (once, in a
separate process) DIR/pooled.h5 with the real ids of ``--splits`` and features computed from the pixels
(a fixed random projection of the grey image at 16 px and the colours at 8 px, 1,280 values): the same
number of images, searches and candidates as a real cache, nearest neighbours that look more alike in
pixels than a backbone's (more pairs pass the coarse pass: slower than on real features).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's pipeline, also when another one is installed

WARM_UP = """
import json, resource, sys, time
import numpy as np
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
features, source, settings = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
"""

AFTER = WARM_UP + """
from pipeline.store.features import FeatureStore
from pipeline.analyses.leakage import match
from pipeline.core.config import LeakageParams
from pipeline.heads.neighbours import top_k_cosine
from pipeline.data.images import thumbnails
from pipeline.stages.leakage import THUMBNAIL, boundary, find
w = np.eye(8, 64, dtype=np.float32); top_k_cosine(w, w, 2, device="cpu")
match(np.full((2, 32, 32), 9, np.uint8) + np.eye(32, dtype=np.uint8) * 99, np.full((2, 32, 32), 9, np.uint8))
before = peak(); start = time.perf_counter()
with FeatureStore(features) as store:
    pairs, searched, seconds = find(store, source, LeakageParams(**settings), device="cpu")
t = time.perf_counter()
lk = LeakageParams(**settings)
thumbnails(source, {k for _, shown in boundary(pairs, lk) for p in shown
                    for k in (p.id, p.nearest_id)}, THUMBNAIL)
seconds["picture's images"] = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "total": time.perf_counter() - start, "before_mib": before, "peak_mib": peak(),
                  "candidates": sum(c for _, c in searched.values()), "checked": len(pairs),
                  "confirmed": sum(p.confirmed for p in pairs)}))
"""

BEFORE = WARM_UP + """
from pipeline.features import FeatureStore  # the module paths of that revision
from pipeline.leakage import candidates, check_pixels, nearest_neighbours, pairs_of, search, split_pair_name
from pipeline.stages.leakage import SHOWN, read_images
w = np.eye(8, 64, dtype=np.float32); nearest_neighbours(w, w, device="cpu")
before = peak(); start = time.perf_counter()
with FeatureStore(features) as store:
    ids = {s: store.ids(s) for s in store.splits}
    found = search(store, 4096, device="cpu")
seconds = {"search": time.perf_counter() - start}
listed, shown = [], []
for (q, b), nearest in found.items():
    listed += candidates(ids[q], ids[b], nearest, split_pair_name(q, b), 0.85)
    shown += pairs_of(ids[q], ids[b], nearest, split_pair_name(q, b), limit=SHOWN)
t = time.perf_counter()
small, _ = read_images(source, {k for p in listed for k in (p.id, p.nearest_id)}, 16,
                       {k for p in shown for k in (p.id, p.nearest_id)})
seconds["reading (and the picture's images)"] = time.perf_counter() - t
t = time.perf_counter()
listed = check_pixels(listed, small, 12, 0.85)
seconds["pixel check"] = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "total": time.perf_counter() - start, "before_mib": before, "peak_mib": peak(),
                  "candidates": len(listed), "checked": len(listed), "confirmed": sum(p.confirmed for p in listed)}))
"""


def write_proxy(path: Path, splits_path: Path, dim: int = 1280, seed: int = 0) -> None:
    """A pooled cache with the real ids of the splits and features from the pixels (see the module doc)."""
    import numpy as np
    from PIL import Image

    from pipeline.analyses.leakage import grey_square
    from pipeline.data.images import read_images
    from pipeline.data.sources import Splits
    from pipeline.store.features import FeatureSpec, PartialFeatures

    splits = Splits.load(splits_path)
    rng = np.random.default_rng(seed)
    projection = rng.normal(0, 1, (256 + 192, dim)).astype(np.float32) / 16
    order = {k: (name, i) for name, split in splits.splits.items() for i, k in enumerate(split.keys)}
    rows = {name: np.zeros((len(split.keys), dim), np.float32) for name, split in splits.splits.items()}
    for key, image in read_images(splits.source, order):
        grey = grey_square(image, 16).astype(np.float32).ravel() / 255
        colour = np.asarray(Image.fromarray(image).resize((8, 8))).astype(np.float32).ravel() / 255
        x = np.concatenate([grey - grey.mean(), colour - colour.mean()]) @ projection
        name, i = order[key]
        rows[name][i] = np.logaddexp(0, x)
    spec = FeatureSpec(backbone="pixels-proxy", weights="none", weights_id="pixels-proxy", input_size=32,
                       preprocessing="{}", dataset_fingerprint=splits.fingerprint, split_seed=seed, init_seed=seed,
                       val_fraction=0.1, subset_per_class=-1, storage_dtype="float32", precision="float32",
                       classes=tuple(splits.classes), feature_dim=dim)
    partial = PartialFeatures(path, spec, 4096)
    for name, X in rows.items():
        for i, start in enumerate(range(0, len(X), 4096)):
            partial.write_part(name, i, X[start : start + 4096], np.ones(len(X[start : start + 4096]), bool))
    partial.assemble(spec, {n: (s.keys, s.labels) for n, s in splits.splits.items()})


def run_in(tree: Path, code: str, features: Path, source: str, settings: dict | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", code, str(features), source, json.dumps(settings or {})], env=env,
                         cwd=tree, capture_output=True, text=True)  # python -c puts the working directory first
    if out.returncode:
        raise SystemExit(f"the run in {tree} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path, default=ROOT / "data/features/pooled.h5")
    parser.add_argument("--splits", type=Path, default=ROOT / "data/prepared/splits.json")
    parser.add_argument("--proxy", type=Path, default=None, help="write (once) and use DIR/pooled.h5")
    parser.add_argument("--before", default="260d6eb", help="the git revision of the 'before' run")
    parser.add_argument("--write-proxy", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_proxy:
        write_proxy(args.write_proxy, args.splits)
        return
    from pipeline.core.device import describe_cpu
    from pipeline.data.sources import Splits

    features = args.features
    if args.proxy:
        features = args.proxy / "pooled.h5"
        if not features.exists():
            print(f"writing the proxy cache {features} (once)")
            features.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, __file__, "--splits", str(args.splits), "--write-proxy", str(features)],
                           check=True)
    source = Splits.load(args.splits).source
    source = source if "://" in source else str(Path(source).resolve())  # the runs work in their own tree
    print(f"CPU: {describe_cpu()}; load average before: {os.getloadavg()}")
    print(f"features: {features}; images: {source}")
    with tempfile.TemporaryDirectory() as old:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before, "pipeline"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", old], input=archive, check=True)
        results = {f"before ({args.before})": run_in(Path(old), BEFORE, features, source)}
    results["after, the features' candidates alone (pixel_neighbours 0)"] = run_in(
        ROOT, AFTER, features, source, {"pixel_neighbours": 0})
    results["after (this checkout)"] = run_in(ROOT, AFTER, features, source)
    for name, r in results.items():
        steps = ", ".join(f"{step} {s:.1f} s" for step, s in r["seconds"].items())
        print(f"{name}: {r['total']:.1f} s ({steps}); peak memory +{r['peak_mib'] - r['before_mib']:,.0f} MiB "
              f"(from {r['before_mib']:,.0f}); {r['candidates']:,} candidates, {r['checked']:,} checked at full size, "
              f"{r['confirmed']:,} confirmed")
    b, a = results[f"before ({args.before})"], results["after (this checkout)"]
    added = a["peak_mib"] - a["before_mib"]
    print(f"after / before: time x{a['total'] / b['total']:.2f}, peak memory added {added:,.0f} vs "
          f"{b['peak_mib'] - b['before_mib']:,.0f} MiB; targets, at most 180 s and +400 MiB: "
          f"{'met' if a['total'] <= 180 and added <= 400 else 'NOT met'}")


if __name__ == "__main__":
    main()
