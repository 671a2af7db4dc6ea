"""Wall time per training epoch, adaptive vs every token, same recipe and images (issue: >= 30% less).

    python -m adavit traintime --json results/train_timing.json [--epochs 1] [--limit N]
    python -m adavit traintime --json results/train_timing_distill.json --distill 0.5 --distill-every 2

Runs `adavit train` twice with the same arguments, once with `--full-tokens`, without the probe and
validation (they are not part of an epoch), and compares the logged `epoch_wall_s`. Any other
`adavit train` flag (a lever: --distill, --gate learned, --train-resolutions ...) goes to the
adaptive run only, so the criterion is checked for the recipe as it will be trained.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from ..measure import metrics
from . import recipe as train


def epoch_times(out: Path, extra: list[str]) -> list[float]:
    if train.main(["--out", str(out), "--no-val", "--probe-epochs", "0", *extra]) != 0:
        raise SystemExit(f"training failed (see {out})")
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [r["epoch_wall_s"] for r in logs if r.get("phase") == "train"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="adavit traintime", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--limit", type=int, default=None, help="first N training images (smoke tests)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args, levers = p.parse_known_args(argv)
    common = ["--epochs", str(args.epochs)]
    for flag, value in (("--limit", args.limit), ("--data-root", args.data_root), ("--threads", args.threads)):
        if value is not None:
            common += [flag, str(value)]
    with tempfile.TemporaryDirectory(prefix="adavit-traintime-") as tmp:
        adaptive = epoch_times(Path(tmp) / "adaptive", [*common, *levers])
        full = epoch_times(Path(tmp) / "full", [*common, "--full-tokens"])
    a, f = sum(adaptive) / len(adaptive), sum(full) / len(full)
    out = {"epochs": args.epochs, "threads": torch.get_num_threads(), "device": train.pick_device("auto").type,
           "recipe_args": common, "levers": levers, "adaptive_epoch_s": adaptive, "full_epoch_s": full,
           "adaptive_mean_s": a, "full_mean_s": f, "reduction": 1 - a / f}
    print(f"per epoch: adaptive {a:.1f} s, full-token {f:.1f} s -> {100 * (1 - a / f):.1f}% less wall time "
          f"(target >= 30%)")
    if args.json:
        print(f"wrote {metrics.write_json(args.json, out)}")
    return 0
