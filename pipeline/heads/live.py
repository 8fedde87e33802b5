"""Training curves of a head, written with DVCLive into one folder per head configuration.

The train stage opens a :class:`TrainingLog` in ``evaluation/live/<configuration>/`` and passes it to the
one call ``head.fit_store(store, log)``. Heads that train for
epochs (mlp, finetune) log one step per epoch: ``train/loss`` (mean training loss of the epoch),
``val/top1`` (top-1 on the validation split, read from the store by the head itself, scored in eval mode
without touching any random generator, so seeded results are identical with and without the log) and
``train/seconds`` (since the start of training; in ``metrics.json`` only, not a plot). A head fitted in
one go logs no step: closing the log writes ``metrics.json`` with its ``train/seconds`` at step 0, as
DVCLive would, without DVCLive (importing and starting it costs about a second, a tenth of a head swap's
budget), so it has no plot at all (a plot of one point says nothing). DVCLive writes ``metrics.json``
(the last step) and ``plots/metrics/<name>.tsv``;
dvc.yaml declares the folder as an output and ``plots/metrics`` as the train stage's plots. For a head fitted in
one go that folder holds ``no_epochs.tsv``, a table with a header and no row: git keeps no empty folder, and
DVC keeps this file in its run cache (a restored head keeps it) and draws no plot of a table without rows.
DVCLive's own edits of dvc.yaml and its experiment saving are turned off (DVC runs the stage).
"""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.core.fileutil import write_json

NO_EPOCHS = "no_epochs.tsv"
"""The one file of the plots folder of a head fitted in one go (see the module's docstring)."""


class TrainingLog:
    """Per-step metrics of one training run, written with DVCLive (``Live(dir, save_dvc_exp=False,
    dvcyaml=False)``, started at the first step). Use as a context manager."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.start = time.perf_counter()
        self._live = None

    def step(self, metrics: dict[str, float]) -> None:
        """Log one step (an epoch): each ``name`` (e.g. ``train/loss``) with its value, and
        ``train/seconds`` since the log was opened."""
        if self._live is None:
            from dvclive import Live

            self._live = Live(dir=str(self.folder), save_dvc_exp=False, dvcyaml=False, report=None, monitor_system=False)
        for name, value in metrics.items():
            self._live.log_metric(name, float(value))
        self._live.log_metric("train/seconds", round(time.perf_counter() - self.start, 3), plot=False)
        self._live.next_step()

    def close(self) -> None:
        if self._live is not None:
            self._live.end()
        else:  # fitted in one go: DVCLive's summary of a run of one step
            write_json(self.folder / "metrics.json", {"train": {"seconds": round(time.perf_counter() - self.start, 3)},
                                                      "step": 0})
        plots = self.folder / "plots" / "metrics"  # the stage's plots output
        plots.mkdir(parents=True, exist_ok=True)
        if not any(plots.iterdir()):  # git keeps no empty folder: without a file, a clone lacks the output
            (plots / NO_EPOCHS).write_text("step\n")  # a table with no row: DVC draws nothing of it

    def __enter__(self) -> TrainingLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
