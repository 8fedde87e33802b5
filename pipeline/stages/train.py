"""Stage train (head side): fit one head configuration on the cached features, then score the saved head
(:mod:`pipeline.stages.evaluate`, in the same process).

``--config`` names it: ``head`` (the main head), ``heads.<name>`` or ``finetune.<name>``. Every kind is
trained by the same call, ``head.fit_store(store)``; the head reads only the feature store. Its training
curves go to its DVCLive folder, evaluation/live/<configuration>/ (see :mod:`pipeline.heads.live`):
one step per epoch for the heads that train for epochs, one step for the others. A configuration with
``calibrate: true`` then gets its temperature, fitted on the validation split (see
:mod:`pipeline.heads.calibration`), saved in the head file.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from pipeline.core import layout
from pipeline.core.config import Params
from pipeline.core.head_registry import build_head
from pipeline.heads.base import fit_and_score
from pipeline.store.features import FeatureStore, expected_spec

if TYPE_CHECKING:
    from pipeline.heads.live import TrainingLog


def run(params: Params, features_path: str | Path, splits_path: str | Path, head_path: str | Path,
        key: str = "head", live_dir: str | Path | None = None) -> dict:
    """Fit the head configured at ``key`` on the feature file; save it with what it was trained on.
    ``live_dir``: where to write the training curves with DVCLive (none when None)."""
    config = params.head_config(key)
    head = build_head(config, seed=params.seed)
    with FeatureStore(features_path) as store, _training_log(live_dir) as log:
        store.check(expected_spec(params, splits_path, head.input))
        identity, n_train = store.spec.identity(), store.n_rows("train")
        if config.params.calibrate:
            head.check_calibration(store, name=key)  # before a long fit
        fit_seconds = fit_and_score(head, store, splits=(), log=log).fit_seconds
        calibration = head.calibrate(store, name=key) if config.params.calibrate else {}
    head.save(head_path, metadata={"features": identity, "fit_seconds": fit_seconds, "n_train": n_train})
    shape = "x".join(map(str, identity["feature_shape"]))
    print(f"trained head {config.kind} ({key}) on {n_train} x {shape} features in "
          f"{fit_seconds:.1f} s {head.chosen or ''} -> {head_path}")
    if calibration:
        print(f"calibrated on the validation split: temperature {calibration['temperature']:.4g}, validation NLL "
              f"{calibration['val_nll']:.4f} -> {calibration['val_nll_calibrated']:.4f}")
    return {"fit_seconds": fit_seconds, **head.chosen, **calibration}


@contextlib.contextmanager
def _training_log(live_dir: str | Path | None) -> Iterator[TrainingLog | None]:
    if live_dir is None:
        yield None
        return
    from pipeline.heads.live import TrainingLog

    with TrainingLog(live_dir) as log:
        yield log


def main(argv: list[str] | None = None) -> int:
    from pipeline.core.cli import head_parser, run_stage

    args = head_parser(__doc__).parse_args(argv)

    def stage(params: Params, a) -> dict:
        from pipeline.stages import evaluate

        features = layout.FEATURES[params.head_config(a.config).params.input]
        fitted = run(params, features, layout.SPLITS, layout.head_file(a.config), a.config, layout.live_dir(a.config))
        evaluate.run_config(params, a.config)  # in this process: one start-up and one set of imports, not two
        return fitted

    return run_stage(args, stage)


if __name__ == "__main__":
    sys.exit(main())
