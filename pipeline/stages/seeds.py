"""Stage seeds@<seed> (head side): the head configurations refit with one seed of ``seeds.values``.

Reads only the feature files (never images or the frozen backbone): each configuration of
``seeds.configurations`` (default: the stochastic ones) is fitted with ``--seed`` as the train stage fits
it, on the cached splits or, with ``seeds.splits``, on a train / val split re-carved for that seed from the
cached train + val rows; every fit is scored on the test split (protocol: docs/seeds.md and
:mod:`pipeline.analyses.seeds`). Writes evaluation/summary/seeds/<seed>.json; compare gathers the seeds into
evaluation/seeds.json and seeds.md. DVC runs one such stage per seed (none while ``seeds.values`` is empty).
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

from pipeline.analyses.seeds import SeedFit, seed_fits, write_fits
from pipeline.core import layout
from pipeline.core.config import Params
from pipeline.store.features import FeatureStore, expected_spec


def run(params: Params, features_paths: dict[str, str | Path], splits_path: str | Path, seed: int,
        out_path: str | Path) -> list[SeedFit]:
    """The configured heads fitted with ``seed``; ``features_paths``: the pooled feature file and the cut
    cache (by input: ``pooled``, ``cut``), opened only when a repeated head reads it."""
    seeds, val_fraction = params.seeds, params.data.val_fraction
    configs = params.seed_configs()
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        stores = {}
        for input in dict.fromkeys(c.params.input for c in configs):
            stores[input] = stack.enter_context(FeatureStore(features_paths[input]))
            stores[input].check(expected_spec(params, splits_path, input))
        print(f"seed {seed} for {[c.key for c in configs]}"
              + (f", train / val re-carved (val_fraction {val_fraction})" if seeds.splits else ""))
        fits = seed_fits(stores, configs, seed, seeds.splits, val_fraction)
    write_fits(fits, out_path)
    print(f"seed {seed}: {len(fits)} fits in {time.perf_counter() - start:.1f} s -> {out_path}")
    return fits


def main(argv: list[str] | None = None) -> int:
    from pipeline.core.cli import parser, run_stage

    p = parser(__doc__)
    p.add_argument("--seed", type=int, required=True, help="one of seeds.values")
    args = p.parse_args(argv)
    return run_stage(args, lambda params, a: run(params, layout.FEATURES, layout.SPLITS, a.seed,
                                                 layout.seed_fits_file(a.seed)))


if __name__ == "__main__":
    sys.exit(main())
