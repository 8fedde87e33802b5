"""Training curves of a head, written with DVCLive into one folder per head configuration.

The train stage opens a :class:`TrainingLog` in ``evaluation/live/<configuration>/`` and passes it to the
one call ``head.fit_store(store, log)``. Heads that train for
epochs (mlp, finetune) log one step per epoch: ``train/loss`` (mean training loss of the epoch),
``val/top1`` (top-1 on the validation split, read from the store by the head itself, scored in eval mode
without touching any random generator, so seeded results are identical with and without the log) and
``train/seconds`` (since the start of training; in ``metrics.json`` only, not a plot). A head fitted in
one go gets one step, written by the stage: ``train/seconds``, so it has no plot at all (a plot of one
point says nothing). DVCLive writes ``metrics.json`` (the last step) and ``plots/metrics/<name>.tsv``;
dvc.yaml declares the folder as an output and ``plots/metrics`` as the train stage's plots (an empty
folder for a head fitted in one go). DVCLive's own edits of dvc.yaml and its experiment saving are
turned off (DVC runs the stage).
"""

from __future__ import annotations

import time
from pathlib import Path


class TrainingLog:
    """Per-step metrics of one training run, written with DVCLive (``Live(dir, save_dvc_exp=False,
    dvcyaml=False)``). Use as a context manager."""

    def __init__(self, folder: str | Path):
        from dvclive import Live

        self.folder = Path(folder)
        self.steps = 0
        self.start = time.perf_counter()
        self._live = Live(dir=str(self.folder), save_dvc_exp=False, dvcyaml=False, report=None, monitor_system=False)

    def step(self, metrics: dict[str, float]) -> None:
        """Log one step (an epoch): each ``name`` (e.g. ``train/loss``) with its value, and
        ``train/seconds`` since the log was opened."""
        for name, value in metrics.items():
            self._live.log_metric(name, float(value))
        self._live.log_metric("train/seconds", round(time.perf_counter() - self.start, 3), plot=False)
        self._live.next_step()
        self.steps += 1

    def close(self) -> None:
        self._live.end()
        (self.folder / "plots" / "metrics").mkdir(parents=True, exist_ok=True)  # the stage's plots output

    def __enter__(self) -> TrainingLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
