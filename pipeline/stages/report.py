"""Stage report: the comparison of every trained head (:mod:`pipeline.stages.compare`), the pictures of the
mistakes of the main and the best head (:mod:`pipeline.stages.mistakes`, the one part that reads images), then
one page that answers the five questions of the run (which head, how many labels, which backbone, how far to
trust it, where it fails), each section opening with a sentence computed from the figures. One process: a
head swap re-runs all three, and each process of its own would start and import again (about a second);
compare runs while the mistakes' images are read, in a forked process.

The page reads only the other stages' outputs (no image, no backbone, no fitting; see
:mod:`pipeline.reports.report`) and is written as one set: evaluation/report.md (links to the pictures beside
it), evaluation/report.html (self-contained: the pictures embedded), and the two pictures it draws itself:
evaluation/report_curve.png (the learning curve) and evaluation/report_reliability.png (the chosen head's).
"""

from __future__ import annotations

import sys

from pipeline.core import layout
from pipeline.core.config import Params
from pipeline.reports.report import read_inputs, write


def run(params: Params, evaluation=layout.EVALUATION, stem=layout.REPORT) -> dict[str, str]:
    answers = write(read_inputs(params, evaluation), evaluation, stem)
    for title, answer in answers.items():
        print(f"{title}: {answer}")
    print(f"report -> {stem}.md, {stem}.html")
    return answers


def main(argv: list[str] | None = None) -> int:
    from pipeline.core.cli import parser, run_stage
    from pipeline.stages import compare, mistakes

    def stage(params: Params, _) -> dict[str, str]:
        mistakes.run_all(params, meanwhile=lambda: compare.run_all(params))  # compare while the images are read
        return run(params)

    args = parser(__doc__).parse_args(argv)
    return run_stage(args, stage)


if __name__ == "__main__":
    sys.exit(main())
