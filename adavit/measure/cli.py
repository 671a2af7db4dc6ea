"""What every measuring command does first: parse its arguments and apply --threads."""
from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed command line, with torch's CPU threads set before any model loads or timing starts."""
    args = p.parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    return args
