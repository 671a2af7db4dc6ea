"""adavit ablate: what each part of AdaViT buys, at matched GFLOPs (the README's ablation table).

    python -m adavit ablate --json results/ablate.json [--checkpoint PATH] [--variant distill=PATH ...]

Every row compares two arms at the same budgets (shares of the full-token GFLOPs at 224 px). An arm
is a model and a family of AdaViT settings. At each budget the family's best setting is chosen on
the select half of val and reported on the other half and on all of val, and batch-1 latency is
timed for every chosen point in alternating rounds: the protocol of `adavit compare`.

Rows on one checkpoint (parts that act at inference):
  samplers     one sampler (keep2 = 1: ATS1 only) vs two
  fusion       dropped tokens discarded vs fused into one token
  resolution   224 px vs mixed-scale at 336 px (images decoded at 336, low fine ratios; --high-side)
  attention    global-only stage 1 vs GC-ViT hybrid (windows of 4x4 regions, 112 px for patch 14), same
               weights, not fine-tuned for it
  positions    samplers where trained (after blocks 4 and 8 of 12) vs after 1/4 and 1/2 of the blocks (3 and
               6), same weights
Rows against a second checkpoint trained with the part (--variant NAME=PATH; train it with the same
schedule as --checkpoint, its baseline): gate (learned gate), scorer (learned scorer), distill
(self-distillation), hybrid (fine-tuned with windows; replaces the not-fine-tuned attention arm),
multires (trained with --train-resolutions 224,336; replaces the resolution row's 336 px arm), budget
(trained with --fine-range / --keep-range narrowed toward the compared budgets), candidate (a recipe
with several parts on: does the sum hold?).

`--on holdout` measures on the train images the --checkpoint's run held out (`train --holdout N`, listed
in its card) instead of val: the set to choose a recipe on. Every --variant must have held out the same.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .. import data
from ..core.config import Settings, check_side
from ..core.model import AdaViT
from ..core.strategies import make
from ..weights import checkpoint
from . import cli, metrics
from .bench import interleaved_medians, machine
from .compare import (
    SEED,
    SELECT_PER_CLASS,
    Cache,
    choose,
    correct,
    evaluated,
    fingerprint,
    held_out_files,
    load_split,
    score,
)
from .flops import CONVENTION
from .sweep import floats

BUDGETS = (0.27, 0.35)
HIGH = 336  # the mixed-scale arm's side
VARIANTS = {"gate": "learned gate (MSViT)", "scorer": "learned scorer (DynamicViT MLP)",
            "distill": "self-distillation", "hybrid": "hybrid stage 1, fine-tuned",
            "multires": "mixed-scale {high} px, trained at 224 and {high} px",
            "budget": "training settings drawn near the compared budgets",
            "candidate": "the candidate recipe (the parts that won alone, together)"}


def family(*, fines=(0.0, 0.1, 0.2, 0.3, 0.5), keeps1=(0.15, 0.25, 0.35, 0.5, 0.75, 1.0), keeps2=(0.25, 0.5, 1.0),
           fuse: bool = False, resolution: int = 224) -> list[tuple[object, float]]:
    """(AdaViT strategy, family) candidates: the fine ratio is the family, as in `compare`."""
    return [(make("adavit", settings=Settings(f, k1, k2, "topk", fuse, resolution)), f)
            for f in fines for k1 in keeps1 for k2 in keeps2]


@dataclasses.dataclass(frozen=True)
class Arm:
    label: str
    model: str  # key into the models: "base", "windows", or a variant name
    candidates: tuple
    resolution: int = 224


def rows(variants: dict[str, str], side: int = HIGH) -> dict[str, tuple[Arm, Arm]]:
    """Each ablation as (without the part, with it); the resolution row's larger arm decodes at `side`."""
    two = tuple(family())
    high = tuple(family(fines=(0.0, 0.05, 0.1, 0.15, 0.2), resolution=side))
    out = {
        "samplers": (Arm("one sampler (ATS1 only)", "base", tuple(family(keeps2=(1.0,)))),
                     Arm("two samplers", "base", two)),
        "fusion": (Arm("drop", "base", two), Arm("fuse", "base", tuple(family(fuse=True)))),
        "resolution": (Arm("224 px", "base", two), Arm(f"mixed-scale {side} px", "base", high, side)),
        "attention": (Arm("global stage 1", "base", two),
                      Arm("hybrid stage 1 (not fine-tuned)", "windows", two)),
        "positions": (Arm("samplers where trained", "base", two),
                      Arm("samplers after 1/4 and 1/2 of the blocks (not fine-tuned)", "early", two)),
    }
    for name in variants:
        label = VARIANTS[name].format(high=side)
        with_part = Arm(label, name, two)
        if name == "hybrid":
            out["attention"] = (out["attention"][0], with_part)
        elif name == "multires":  # the question is whether 336 px now beats 224 px at the same GFLOPs
            out["resolution"] = (out["resolution"][0], Arm(label, name, high, side))
        else:
            out[name] = (Arm(f"without {label}", "base", two), with_part)
    return out


def load_models(base: Path, variants: dict[str, str]) -> dict[str, tuple[AdaViT, Path]]:
    models = {"base": (checkpoint.load_model(base), base)}
    cfg = models["base"][0].config
    windowed = AdaViT.create(dataclasses.replace(cfg, windows=(4 * models["base"][0].region, 0, 0)))
    windowed.load_state_dict(models["base"][0].state_dict())
    models["windows"] = (windowed.eval(), base)
    q = max(1, sum(cfg.stages) // 4)  # the positions row: same weights, samplers after 1/4 and 1/2 of the blocks
    early = AdaViT.create(dataclasses.replace(cfg, stages=(q, q, sum(cfg.stages) - 2 * q)))
    early.load_state_dict(models["base"][0].state_dict())
    models["early"] = (early.eval(), base)
    for name, path in variants.items():
        models[name] = (checkpoint.load_model(path), Path(path))
    return models


def parse_variants(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or name not in VARIANTS:
            raise ValueError(f"--variant must be NAME=PATH with NAME one of {', '.join(VARIANTS)}; got {item!r}")
        if not Path(path).exists():
            raise ValueError(f"--variant {name}: no checkpoint at {path}")
        out[name] = path
    return out


def run(args: argparse.Namespace) -> dict:
    t0, load_at_start = time.time(), list(os.getloadavg())
    variants = parse_variants(args.variant)
    base = Path(args.checkpoint) if args.checkpoint else checkpoint.SHIPPED
    models = load_models(base, variants)
    spec, data_seed = data.card_data(checkpoint.read_card(base), args.data)
    root = data.resolve_data_root(args.data_root) if spec == data.labelled.FLOWERS else None
    held = held_out_files(base, {f"--variant {n}": p for n, p in variants.items()}) if args.on == "holdout" else ()
    check_side(args.high_side, "--high-side", models["base"][0].patch)
    table = rows(variants, args.high_side)
    if args.rows:
        unknown = set(args.rows) - set(table)
        if unknown:
            raise ValueError(f"--rows {', '.join(sorted(unknown))}: not a row here; rows: {', '.join(table)} "
                             "(gate, scorer and distill need their --variant)")
        table = {k: v for k, v in table.items() if k in args.rows}
    sides = sorted({arm.resolution for pair in table.values() for arm in pair})
    splits = {side: load_split(root, args.select_per_class, SEED, 0, args.per_class, spec, data_seed, side, held)
              for side in sides}
    split = splits[224]
    out_path = Path(args.json)
    caches = {(key, side): Cache(out_path.with_suffix(f".{key}.{side}.cache.jsonl"),
                                 fingerprint(path, splits[side]) + key)
              for key, (_, path) in models.items() for side in sides}
    model = models["base"][0]
    full = make("resolution", size=(224, 224))
    full_row = evaluated(caches[("base", 224)], model, full, split, "all", args.batch_size)
    full_gflops = float(np.mean(full_row["gflops"]))
    full_scores = score(split, np.arange(len(split.targets)), np.array(full_row["preds"]))
    results, chosen = {}, {}
    for row, arms in table.items():
        results[row] = []
        for arm in arms:
            m = models[arm.model][0]
            s = splits[arm.resolution]
            probe = s.images[torch.as_tensor(s.select[:: max(1, len(s.select) // args.probe)][: args.probe])]
            pts = choose(caches[(arm.model, arm.resolution)], m, arm.candidates, s, full_gflops, args.budgets,
                         args.candidates, args.batch_size, probe, f"{row}: {arm.label}")
            for p in pts:
                if p.get("settings"):
                    chosen[(row, arm.label, p["budget"])] = (m, p["_strategy"], s.images[:1])
                    p["_correct"] = correct(caches[(arm.model, arm.resolution)], m, p["_strategy"], s,
                                            args.batch_size)
            results[row].append({"arm": arm.label, "model": arm.model, "points": pts})
            best = [f"{p['budget']:.0%}: {100 * p['top1']:.2f}%" for p in pts if p.get("settings")]
            print(f"{row} / {arm.label}: {', '.join(best)}", flush=True)
    lat = {}
    if args.latency_runs:
        fns = {k: (lambda m=m, st=st, x=x: st.forward(m, x)) for k, (m, st, x) in chosen.items()}
        lat = interleaved_medians(fns, args.latency_runs)
    for without, with_ in results.values():  # paired on the same images, budget by budget
        for a, b in zip(without["points"], with_["points"]):
            if "_correct" in a and "_correct" in b:
                b["paired"] = metrics.paired(a["_correct"], b["_correct"])
    for row, arms in results.items():
        for arm in arms:
            for p in arm["points"]:
                p.pop("_strategy", None)
                p.pop("_correct", None)
                p["latency_ms_b1"] = lat.get((row, arm["arm"], p["budget"]))
    where = "held-out train images" if held else "val images"
    return {
        "on": args.on, "budgets": list(args.budgets), "rows": results,
        "full": {"top1": full_scores["top1"], "weighted_f1": full_scores["weighted_f1"], "gflops": full_gflops},
        "checkpoints": {k: str(p) for k, (_, p) in models.items() if k not in ("windows", "early")},
        "protocol": {
            "select": f"{len(split.select)} {where}, {args.select_per_class} per class (stratified, seed {SEED})",
            "report": f"the other {len(split.report)} {where}", "all": f"{len(split.targets)} {where}",
            "candidates_per_budget": args.candidates, "gflops": f"mean per image; {CONVENTION}",
            "budgets": "shares of the full-token GFLOPs at 224 px",
            "latency": f"median ms, batch 1, {args.latency_runs} alternating rounds, {torch.get_num_threads()} threads",
        },
        "command": args.command, "wall_time_s": round(time.time() - t0, 1), "machine": machine(load_at_start),
    }


def markdown(out: dict) -> str:
    on = "held-out" if out.get("on") == "holdout" else "val"
    lines = [f"On {out['protocol']['all']}. Every token at 224 px: top-1 {100 * out['full']['top1']:.2f}%, "
             f"{out['full']['gflops']:.2f} GFLOPs.", "",
             f"| ablation | arm | budget | top-1 (all {on}) | top-1 (report half) | weighted F1 | GFLOPs "
             "| batch-1 ms | images gained / lost with the part (McNemar p) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row, arms in out["rows"].items():
        for arm in arms:
            for p in arm["points"]:
                if not p.get("settings"):
                    lines.append(f"| {row} | {arm['arm']} | {p['budget']:.0%} | n/a: {p.get('missing')} | | | | | |")
                    continue
                ms = f"{p['latency_ms_b1']:.1f}" if p.get("latency_ms_b1") is not None else "n/a"
                q = p.get("paired")
                pair = f"+{q['gained']} / -{q['lost']} (p = {q['p_value']:.2f})" if q else ""
                lines.append(f"| {row} | {arm['arm']} | {p['budget']:.0%} | {100 * p['top1']:.2f}% | "
                             f"{100 * p['top1_report']:.2f}% | {100 * p['weighted_f1']:.2f}% | {p['gflops']:.2f} | "
                             f"{ms} | {pair} |")
    return summary(out) + "\n\n" + "\n".join(lines)


def summary(out: dict) -> str:
    """One line per part: top-1 with it minus without, per budget, and the paired image counts."""
    budgets = out["budgets"]
    lines = ["| part (with it, against without) | " + " | ".join(f"{b:.0%}" for b in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    for row, (without, with_) in out["rows"].items():
        cells = []
        for b in budgets:
            a = next((p for p in without["points"] if p["budget"] == b), {})
            p = next((p for p in with_["points"] if p["budget"] == b), {})
            if not (a.get("settings") and p.get("settings")):
                cells.append("n/a")
                continue
            q = p.get("paired") or {}
            cells.append(f"{100 * (p['top1'] - a['top1']):+.2f} pts (+{q.get('gained')} / -{q.get('lost')}, "
                         f"p = {q.get('p_value', 1):.2f})")
        lines.append(f"| {row}: {with_['arm']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adavit ablate", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True, help="write the results here (and cache points beside it)")
    p.add_argument("--markdown", default=None, help="write the README table here (default: <json> with .md)")
    p.add_argument("--checkpoint", default=None, help=f"the baseline (default {checkpoint.SHIPPED})")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=PATH",
                   help=f"a checkpoint trained with one part on; NAME from {', '.join(VARIANTS)}")
    p.add_argument("--rows", type=lambda t: [x.strip() for x in t.split(",") if x.strip()], default=None,
                   help="only these rows (comma-separated; default: all)")
    p.add_argument("--data", default=None, help="flowers102 or imagefolder:DIR (default: the checkpoint card's)")
    p.add_argument("--data-root", default=None, help="folder holding flowers-102/ (default: $ADAVIT_DATA or "
                   "../shared/data)")
    p.add_argument("--on", choices=("val", "holdout"), default="val",
                   help="val (report), or holdout: the train images the --checkpoint's run held out (train "
                        "--holdout N; its card lists them), the set to choose a recipe on without looking at val")
    p.add_argument("--per-class", type=int, default=None, help="only N val images per class (quick checks)")
    p.add_argument("--select-per-class", type=int, default=SELECT_PER_CLASS)
    p.add_argument("--budgets", type=floats, default=list(BUDGETS), help="shares of the full-token GFLOPs")
    p.add_argument("--candidates", type=int, default=3, help="settings evaluated per arm and budget")
    p.add_argument("--high-side", type=int, default=HIGH,
                   help=f"the resolution row's mixed-scale arm decodes the images at this side (default {HIGH}; a "
                        "multiple of the 2x2-patch region)")
    p.add_argument("--probe", type=int, default=4, help="images each candidate is costed on")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--latency-runs", type=int, default=10, help="batch-1 rounds (0: skip latency)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = cli.parse(parser(), argv)
    try:
        if any(not 0 < b <= 1 for b in args.budgets):
            raise ValueError(f"budgets are shares of the full-token GFLOPs in (0, 1], got {args.budgets}")
        out = run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    metrics.write_report(args.json, out, f"{markdown(out)}\n\nRegenerate: `{args.command}`", args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
