"""A head's test predictions, one row per test image: ``test_predictions.csv`` (id, actual, predicted,
confidence). The evaluate step writes it beside each head's metrics.json; compare reads it for the paired
tests and the figures without near-copies, the mistakes for their pictures, DVC for its confusion plot."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from pipeline.core.errors import PipelineError

COLUMNS = ["id", "actual", "predicted", "confidence"]
"""The columns, in order: the image id, its class, the predicted class (class names), and the probability
the head gave its predicted class."""


@dataclass(slots=True)  # not frozen: reading a file took twice as long so (compare reads every head's on a swap)
class Prediction:
    id: str
    actual: str
    predicted: str
    confidence: float

    @property
    def wrong(self) -> bool:
        return self.actual != self.predicted


def write_predictions(path: str | Path, rows: Iterable[tuple[str, str, str, float]]) -> None:
    """Rows of (id, actual, predicted, confidence) to ``path``."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows((i, a, p, f"{c:.6g}") for i, a, p, c in rows)


def read_predictions(path: str | Path) -> list[Prediction]:
    """The rows of a test_predictions.csv, in its order."""
    with open(path, newline="") as f:
        rows = csv.reader(f)  # csv.DictReader: twice as slow, and compare reads every head's on a head swap
        header = next(rows, [])
        if missing := [c for c in COLUMNS if c not in header]:
            raise PipelineError(f"{path} lacks the columns {missing} (written by an older evaluate stage): run the "
                                "train stages again (dvc repro)")
        i, a, p, c = (header.index(c) for c in COLUMNS)
        try:
            return [Prediction(row[i], row[a], row[p], float(row[c])) for row in rows]
        except (IndexError, ValueError) as err:
            raise PipelineError(f"{path} line {rows.line_num}: not a prediction ({err}): run the train stages "
                                "again (dvc repro)") from None
