"""The backbone comparison's rows, one per compared backbone, from what extract-backbone, probe-backbone and
curves-backbone wrote into its folder: read by the compare-backbones stage and by the report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from pipeline.core import layout
from pipeline.core.errors import PipelineError


def read_rows(names: list[str], folder: str | Path) -> list[dict]:
    """One row per compared backbone: its extraction summary and its probe, from ``folder/<name>/``."""
    rows = []
    curve_file = layout.CURVES.with_suffix(".csv").name
    for name in names:
        files = {f: Path(folder) / name / f for f in (layout.COMPARED_EXTRACTION, layout.COMPARED_PROBE, curve_file)}
        missing = [str(p) for p in files.values() if not p.exists()]
        if missing:
            raise PipelineError(f"backbone {name!r} has no {', '.join(missing)}: run its extract-backbone, "
                                "probe-backbone and curves-backbone stages (dvc repro)")
        with open(files[curve_file], newline="") as f:
            curve = list(csv.DictReader(f))
        rows.append({"name": name, **json.loads(files[layout.COMPARED_EXTRACTION].read_text()),
                     **json.loads(files[layout.COMPARED_PROBE].read_text()), "curve": curve})
    return rows
