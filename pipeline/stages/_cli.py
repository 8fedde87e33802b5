"""What every stage's command line shares: the --params option and turning errors into messages."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from pipeline.config import Params, load_params
from pipeline.errors import PipelineError


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return p


def message(err: BaseException) -> str:
    """The one line a user sees for an error: its message, also when raised in a DataLoader worker."""
    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError) and err.strerror:
        return f"{err.strerror} ({err.filename or 'writing the outputs'})"  # disk full, read-only folder, ...
    text = str(err).strip()
    if "Original Traceback" in text:  # re-raised from a worker process: keep the original message
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text


def run_stage(args: argparse.Namespace, stage: Callable[[Params, argparse.Namespace], object]) -> int:
    """Load the params, run the stage; a PipelineError (or a missing file) is one line on stderr, exit 2."""
    try:
        stage(load_params(args.params), args)
    except (PipelineError, OSError) as err:
        print(f"error: {message(err)}", file=sys.stderr)
        return 2
    return 0
