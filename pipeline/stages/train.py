"""Stage train (head side): fit one head configuration on the cached features.

``--config`` names it: ``head`` (the main head), ``heads.<name>`` or ``finetune.<name>``. Every kind is
trained by the same call, ``head.fit_store(store)``; the head reads only the feature store.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from pipeline import layout
from pipeline.config import Params
from pipeline.features import FeatureStore, expected_spec
from pipeline.heads import build_head


def run(params: Params, features_path: str | Path, splits_path: str | Path, head_path: str | Path,
        key: str = "head") -> dict:
    """Fit the head configured at ``key`` on the feature file; save it with what it was trained on."""
    config = params.head_config(key)
    head = build_head(config, seed=params.seed)
    with FeatureStore(features_path) as store:
        store.check(expected_spec(params, splits_path, head.input))
        identity, n_train = store.spec.identity(), store.n_rows("train")
        start = time.perf_counter()
        head.fit_store(store)
        fit_seconds = time.perf_counter() - start
    head.save(head_path, metadata={"features": identity, "fit_seconds": fit_seconds, "n_train": n_train})
    shape = "x".join(map(str, identity["feature_shape"]))
    print(f"trained head {config.kind} ({key}) on {n_train} x {shape} features in "
          f"{fit_seconds:.1f} s {head.chosen or ''} -> {head_path}")
    return {"fit_seconds": fit_seconds, **head.chosen}


def main(argv: list[str] | None = None) -> int:
    from pipeline.stages._cli import head_parser, run_stage

    args = head_parser(__doc__).parse_args(argv)

    def stage(params: Params, a) -> dict:
        features = layout.FEATURES[params.head_config(a.config).params.input]
        return run(params, features, layout.SPLITS, layout.head_file(a.config), a.config)

    return run_stage(args, stage)


if __name__ == "__main__":
    sys.exit(main())
