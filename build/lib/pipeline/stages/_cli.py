"""What every stage's command line shares: the --params option and turning errors into messages."""

from __future__ import annotations

import argparse
import errno
import sys
from typing import Callable

from pipeline.config import Params, load_params
from pipeline.errors import PipelineError


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return p


WHAT_TO_DO = {
    errno.ENOSPC: "free some disk space and run the stage again",
    errno.EDQUOT: "free some disk space (your quota is used up) and run the stage again",
    errno.EROFS: "the file system is mounted read-only: make it writable and run the stage again",
    errno.EACCES: "check that you may write (or read) there and run the stage again",
    errno.EPERM: "check that you may write (or read) there and run the stage again",
}


def head_parser(description: str) -> argparse.ArgumentParser:
    """The parser of a stage that works on one head configuration (train, evaluate)."""
    p = parser(description)
    p.add_argument("--config", default="head", help="head (default), heads.<name> or finetune.<name>")
    return p


def message(err: BaseException) -> str:
    """The one line a user sees for an error: its message, also when raised in a DataLoader worker."""
    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError) and err.strerror:
        # disk full, read-only folder, ...
        text = f"{err.strerror} ({err.filename or 'writing the outputs'})"
        return f"{text}: {WHAT_TO_DO[err.errno]}" if err.errno in WHAT_TO_DO else text
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
