"""Stage weights: record what ``backbone.weights`` is now, so that extraction re-runs when it changes.

DVC sees params, not the contents of a file a param points to: a checkpoint overwritten in place
would leave the features stale. This stage always runs (it only hashes the checkpoint) and writes
its sha256, which extract depends on: the file changes only when the checkpoint does. ``--backbone NAME``
does the same for the compared backbone ``backbones.configurations.NAME`` (stage weights-backbone).
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline import layout
from pipeline.config import Params
from pipeline.fileutil import sha256_file, write_json


def run(params: Params, out_path: str | Path) -> dict:
    weights = params.backbone.weights
    record: dict = {"weights": weights}
    if weights is not None and Path(weights).is_file():
        record["sha256"] = sha256_file(weights)
    write_json(out_path, record)
    print(f"backbone.weights: {weights}" + (f" (sha256 {record['sha256'][:12]}...)" if "sha256" in record else ""))
    return record


def main(argv: list[str] | None = None) -> int:
    from pipeline.stages._cli import parser, run_stage

    p = parser(__doc__)
    p.add_argument("--backbone", help="a name of backbones.configurations: record that compared backbone's weights")
    args = p.parse_args(argv)

    def stage(params: Params, a) -> dict:
        if a.backbone is None:
            return run(params, layout.WEIGHTS)
        return run(params.with_backbone(a.backbone), layout.compared_weights(a.backbone))

    return run_stage(args, stage)


if __name__ == "__main__":
    sys.exit(main())
