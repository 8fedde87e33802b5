"""Stage weights: record what ``backbone.weights`` is now, so that extraction re-runs when it changes.

DVC sees params, not the contents of a file a param points to: a checkpoint overwritten in place would
leave the features stale. So a checkpoint path must lie in ``data/checkpoints/`` (a file or a symbolic
link to one), which this stage depends on: it runs when the param or that folder changes, and writes the
checkpoint's sha256, which extract depends on. The record changes only when the checkpoint does, so a
checkpoint added beside it re-runs this stage (a fraction of a second), not the extraction. A path
elsewhere is refused with what to do. ``--backbone NAME`` does the same for the compared backbone
``backbones.configurations.NAME`` (stage weights-backbone).

It reads the one value from params.yaml without validating the whole configuration (the extract stage
does that): importing the typed configuration costs 0.3 s; this stage takes 0.05 s.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pipeline.core import layout
from pipeline.core.cli import parser
from pipeline.core.errors import ConfigError, guarded
from pipeline.core.fileutil import read_yaml, sha256_file, write_json


def run(weights: str | None, out_path: str | Path, key: str = "backbone.weights",
        checkpoints: str | Path = layout.CHECKPOINTS) -> dict:
    """Write ``{"weights": weights}`` to ``out_path``, with the file's sha256 when ``weights`` names a file
    (one in ``checkpoints``: else :class:`ConfigError`, naming ``key``)."""
    record: dict = {"weights": weights}
    if weights is not None and Path(weights).is_file():
        folder = Path(checkpoints).absolute()
        if not Path(os.path.abspath(weights)).is_relative_to(folder):  # abspath: a link in the folder counts
            raise ConfigError(
                f"{key} {weights!r} is a checkpoint outside {Path(checkpoints).as_posix()}/: DVC tracks that "
                f"folder, not this file, so it could not see the checkpoint change. Copy it there, or link it "
                f"(ln -s {os.path.abspath(weights)} {Path(checkpoints).as_posix()}/), and set {key} to that path")
        record["sha256"] = sha256_file(weights)
    write_json(out_path, record)
    print(f"{key}: {weights}" + (f" (sha256 {record['sha256'][:12]}...)" if "sha256" in record else ""))
    return record


def configured_weights(params: dict, backbone: str | None = None) -> tuple[str | None, str]:
    """``backbone.weights`` of the raw params, or ``backbones.configurations.<backbone>.weights``, and its key."""
    if backbone is None:
        section, key = (params or {}).get("backbone") or {}, "backbone.weights"
    else:
        configurations = ((params or {}).get("backbones") or {}).get("configurations") or {}
        if backbone not in configurations:
            raise ConfigError(f"no compared backbone {backbone!r}; valid: {sorted(configurations)}")
        section, key = configurations[backbone] or {}, f"backbones.configurations.{backbone}.weights"
    weights = section.get("weights", "DEFAULT") if isinstance(section, dict) else "DEFAULT"
    if weights is not None and not isinstance(weights, str):
        raise ConfigError(f"{key} must be a weights name, a checkpoint path or null, got {weights!r}")
    return weights, key


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--backbone", help="a name of backbones.configurations: record that compared backbone's weights")
    args = p.parse_args(argv)
    out = layout.WEIGHTS if args.backbone is None else layout.compared_weights(args.backbone)
    # the raw params, not pipeline.core.cli's validated ones: see above

    def stage() -> dict:
        weights, key = configured_weights(read_yaml(args.params), args.backbone)
        return run(weights, out, key)

    return guarded(stage)


if __name__ == "__main__":
    sys.exit(main())
