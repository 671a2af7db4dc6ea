"""What every measuring command does first: parse its arguments and apply --threads."""
from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

import torch


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed command line, with torch's CPU threads set before any model loads or timing starts.
    `args.command` is the command line that regenerates the results (reports print it)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    args.command = shlex.join(["python", "-m", "adavit", p.prog.removeprefix("adavit "), *argv])
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    return args
