"""Stage seeds (head side): head configurations refit with each seed of ``seeds.values``, test top-1 per seed.

Reads only the feature files (never images or the frozen backbone): each configuration of
``seeds.configurations`` (default: the stochastic ones) is fitted once per seed as the train stage fits it,
on the cached splits or, with ``seeds.splits``, on a train / val split re-carved per seed from the cached
train + val rows; every fit is scored on the test split (protocol: docs/seeds.md and :mod:`pipeline.analyses.seeds`).
Writes evaluation/seeds.json (read by compare) and seeds.md; with ``seeds.values`` empty it
writes a placeholder saying it is off, at no cost.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

from pipeline import layout
from pipeline.analyses.seeds import seed_fits, summarise, write_outputs
from pipeline.config import Params
from pipeline.store.features import FeatureStore, expected_spec


def run(params: Params, features_paths: dict[str, str | Path], splits_path: str | Path,
        stem: str | Path = layout.SEEDS) -> dict:
    """The spread over seeds of the configured heads; ``features_paths``: the pooled feature file and the
    cut cache (by input: ``pooled``, ``cut``), opened only when a repeated head reads it. Returns the summary."""
    seeds, val_fraction = params.seeds, params.data.val_fraction
    configs = params.seed_configs() if seeds.values else []
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        stores = {}
        for input in dict.fromkeys(c.params.input for c in configs):
            stores[input] = stack.enter_context(FeatureStore(features_paths[input]))
            stores[input].check(expected_spec(params, splits_path, input))
        if configs:
            print(f"seeds {seeds.values} for {[c.key for c in configs]}"
                  + (f", train / val re-carved per seed (val_fraction {val_fraction})" if seeds.splits else ""))
        fits = seed_fits(stores, configs, seeds, val_fraction)
    summary = summarise(fits, seeds, val_fraction)
    write_outputs(summary, stem)
    for key, c in summary["configurations"].items():
        print(f"{key} ({c['kind']}): test top-1 {c['mean']:.4f} ± {c['sd']:.4f} (sd over {c['n']} seeds), "
              f"{c['min']:.4f} ... {c['max']:.4f}")
    print(f"seeds: {len(fits)} fits in {time.perf_counter() - start:.1f} s -> {Path(stem)}.json, .md"
          if seeds.values else f"seeds: off (seeds.values is empty) -> {Path(stem)}.json, .md")
    return summary


def main(argv: list[str] | None = None) -> int:
    from pipeline.stages._cli import parser, run_stage

    args = parser(__doc__).parse_args(argv)
    return run_stage(args, lambda params, _: run(params, layout.FEATURES, layout.SPLITS))


if __name__ == "__main__":
    sys.exit(main())
