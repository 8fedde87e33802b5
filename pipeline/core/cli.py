"""What every stage's command line shares: the --params option and turning errors into messages."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Callable

from pipeline.core.errors import guarded

if TYPE_CHECKING:
    from pipeline.core.config import Params


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return p


def head_parser(description: str) -> argparse.ArgumentParser:
    """The parser of a stage that works on one head configuration (train, evaluate)."""
    p = parser(description)
    p.add_argument("--config", default="head", help="head (default), heads.<name> or finetune.<name>")
    return p


def run_stage(args: argparse.Namespace, stage: Callable[[Params, argparse.Namespace], object]) -> int:
    """Load the params, run the stage; a PipelineError (or a missing file) is one line on stderr, exit 2."""
    from pipeline.core.config import load_params  # here: the parser alone imports no pydantic (the weights stage)

    return guarded(lambda: stage(load_params(args.params), args))
