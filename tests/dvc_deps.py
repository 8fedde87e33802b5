"""The code deps of every DVC stage, derived from the import graph: one source, written into dvc.yaml.

Each stage's deps list the pipeline modules its entry point runs (read from the source, function-level
imports included) and, for stages that build heads, every head implementation they may load. A package
directory whose every file the stage runs is listed as the directory (``pipeline/store``: one dep, hashed
as a whole by DVC; ``.dvcignore`` leaves out ``__pycache__/``), the others' modules as their files: a code
change still re-runs exactly the stages that run that code. ``pipeline/core`` (the configuration, the head
registry, paths, errors) is always one dep, whichever of its modules a stage runs: every stage runs most of
it, and dvc.lock, which DVC re-reads and re-writes after every stage it runs, stays short (a third of what
file-by-file deps made it; 2 s of a 10-s head swap). After adding, moving or re-importing a module, rewrite
dvc.yaml's code deps with::

    python -m tests.dvc_deps

``tests/test_layout.py`` fails while dvc.yaml is not what this writes. Only the ``pipeline/`` lines of each
stage's deps are rewritten; data deps, comments and everything else stay as written.
"""

from __future__ import annotations

import re
import sys
from pathlib import PurePosixPath

from tests.conftest import ROOT
from tests.imports import closure, files

POOLED_HEADS = ["pipeline.heads.linear", "pipeline.heads.knn", "pipeline.heads.mlp"]
"""Every pooled head kind's implementation: a train or evaluate stage may build any of them."""
CODE = {  # stage -> the modules it runs: its entry point, and the head implementations it can load
    "prepare": ["pipeline.stages.prepare"],
    "weights": ["pipeline.stages.weights"],
    "extract": ["pipeline.stages.extract"],
    "train": ["pipeline.stages.train", "pipeline.stages.evaluate", *POOLED_HEADS],
    "train-heads": ["pipeline.stages.train", "pipeline.stages.evaluate", *POOLED_HEADS],
    "finetune": ["pipeline.stages.train", "pipeline.stages.evaluate", "pipeline.finetune.head"],
    "leakage": ["pipeline.stages.leakage"],
    "seeds": ["pipeline.stages.seeds", *POOLED_HEADS, "pipeline.finetune.head"],
    "curves": ["pipeline.stages.curves", *POOLED_HEADS],
    "weights-backbone": ["pipeline.stages.weights"],
    "extract-backbone": ["pipeline.stages.extract"],
    "probe-backbone": ["pipeline.stages.probe", *POOLED_HEADS],
    "curves-backbone": ["pipeline.stages.curves", *POOLED_HEADS],
    "plan-backbones": ["pipeline.stages.compare_backbones"],
    "compare-backbones": ["pipeline.stages.compare_backbones"],
    "curves-finetune": ["pipeline.stages.curves_finetune", "pipeline.finetune.head"],
    "report": ["pipeline.stages.report"],
}
DVC_YAML = ROOT / "dvc.yaml"
_STAGE = re.compile(r"^  ([A-Za-z0-9_-]+):\s*$")
_CODE_DEP = re.compile(r"^(\s+)- pipeline/\S+\s*$")


def whole_packages(paths: set[str]) -> set[str]:
    """``paths`` (files) with the files of each directory that ``paths`` holds entirely (every file DVC would
    hash: all but ``__pycache__/``) replaced by the directory, the outermost one."""
    def held(folder: PurePosixPath) -> bool:
        return all(f.relative_to(ROOT).as_posix() in paths for f in (ROOT / folder).rglob("*")
                   if f.is_file() and "__pycache__" not in f.parts)

    return {next((d.as_posix() for d in reversed(PurePosixPath(p).parents[:-1]) if held(d)), p) for p in paths}


CORE = "pipeline/core"
"""Listed whole by every stage that runs any of it."""


def code_deps(stage: str) -> list[str]:
    """The pipeline code ``stage`` runs, sorted: whole package directories, and the files of the other modules."""
    paths = files(closure(*CODE[stage]))
    in_core = {p for p in paths if p.startswith(f"{CORE}/")}
    return sorted(whole_packages(paths - in_core) | ({CORE} if in_core else set()))


def derived(text: str) -> str:
    """``text`` (dvc.yaml) with each stage's run of ``- pipeline/...`` deps replaced by :func:`code_deps`."""
    out, stage, lines, i = [], None, text.splitlines(keepends=True), 0
    while i < len(lines):
        line = lines[i]
        if m := _STAGE.match(line):
            stage = m.group(1)
        if (m := _CODE_DEP.match(line)) and stage in CODE:
            while i < len(lines) and _CODE_DEP.match(lines[i]):
                i += 1
            out += [f"{m.group(1)}- {path}\n" for path in code_deps(stage)]
            continue
        out.append(line)
        i += 1
    return "".join(out)


def main() -> int:
    text = DVC_YAML.read_text()
    new = derived(text)
    if new != text:
        DVC_YAML.write_text(new)
        print("dvc.yaml: code deps rewritten from the import graph")
    else:
        print("dvc.yaml: code deps already current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
