"""Stage compare: one table (Markdown) and one chart (PNG) of every evaluated head configuration."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pipeline import layout
from pipeline.config import Params
from pipeline.fileutil import atomic_files
from pipeline.metrics import comparison_table, plot_comparison


def run(metrics_paths: list[str | Path], out_stem: str | Path) -> list[dict]:
    """Rows of the given metrics.json files, best test top-1 first; writes ``<out_stem>.md`` and ``.png``."""
    rows = sorted((json.loads(Path(p).read_text()) for p in metrics_paths), key=lambda r: -r["test"]["top1"])
    out_stem = Path(out_stem)
    table = comparison_table(rows)
    with atomic_files(out_stem.parent) as staging:
        (staging / f"{out_stem.name}.md").write_text(table)
        plot_comparison(rows, staging / f"{out_stem.name}.png")
    print(table)
    return rows


def main(argv: list[str] | None = None) -> int:
    from pipeline.stages._cli import parser, run_stage

    args = parser(__doc__).parse_args(argv)

    def stage(params: Params, _) -> list[dict]:
        return run([layout.evaluation_dir(k) / layout.METRICS for k in params.head_keys()], layout.COMPARISON)

    return run_stage(args, stage)


if __name__ == "__main__":
    sys.exit(main())
