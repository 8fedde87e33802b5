"""Stage report, its last command (after compare and mistakes): one page that answers the five questions of the run (which head, how many labels, which
backbone, how far to trust it, where it fails), each section opening with a sentence computed from the figures.

Reads only the other stages' outputs (no image, no backbone, no fitting; see :mod:`pipeline.reports.report`) and
writes evaluation/report.md (links to the pictures beside it), evaluation/report.html (self-contained: the
pictures embedded) and evaluation/report_curve.png, as one set.
"""

from __future__ import annotations

import sys

from pipeline import layout
from pipeline.config import Params
from pipeline.reports.report import read_inputs, write


def run(params: Params, evaluation=layout.EVALUATION, stem=layout.REPORT) -> dict[str, str]:
    answers = write(read_inputs(params, evaluation), evaluation, stem)
    for title, answer in answers.items():
        print(f"{title}: {answer}")
    print(f"report -> {stem}.md, {stem}.html")
    return answers


def main(argv: list[str] | None = None) -> int:
    from pipeline.stages._cli import parser, run_stage

    args = parser(__doc__).parse_args(argv)
    return run_stage(args, lambda params, _: run(params))


if __name__ == "__main__":
    sys.exit(main())
