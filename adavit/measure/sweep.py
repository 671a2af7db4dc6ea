"""Sweep fine ratio x keep1 x keep2 (x mode) on Flowers-102 val: accuracy against GFLOPs and latency.

    python -m adavit sweep [--checkpoint PATH] [--fine-ratios 0,0.25,0.5,1] [--keeps1 0.25,0.5,1]
        [--keeps2 0.25,0.5,1] [--modes topk] [--fuse] [--per-class N] [--json PATH] [--html PATH]
        [--update-card]

Patching + stage 1 run once per fine ratio and batch (measure.cache.stage1_cache); every keep/mode point
resumes from there, with exactly the logits of a plain forward. The full-token point is always
included, and so is the resolution baseline (every token of the image resized to a smaller side,
`--resolutions`): fine ratio 0 with keep 1 / 1 is one such point (112 px), and the Pareto front must
be drawn against it. The test split is not offered: a sweep chooses settings, and choosing is tuning.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from torch.utils.data import Dataset
from tqdm import tqdm

from ..core.config import MODES, Settings
from ..core.model import AdaViT
from ..core.strategies import Resolution
from ..data import card_data, eval_dataset
from ..weights import checkpoint
from . import cli, metrics
from .cache import run_from_stage1, stage1_cache
from .evaluate import (
    Collector,
    EvalResult,
    add_model_args,
    batch1_latency,
    check_classes,
    checkpoint_card,
    class_names_of,
    device_of,
    loader_for,
    settings_from,
)
from .flops import outcome_gflops

LATENCY_RUNS = 5


def grid(fine_ratios: Sequence[float], keeps1: Sequence[float], keeps2: Sequence[float],
         modes: Sequence[str] = ("topk",), fuse: bool = False, resolution: int = 224) -> list[Settings]:
    """Every combination (validated by Settings), then the full-token point unless already there."""
    points = [Settings(f, k1, k2, m, fuse, resolution)
              for f in fine_ratios for k1 in keeps1 for k2 in keeps2 for m in modes]
    full = Settings.full(resolution)
    return list(dict.fromkeys(points + [full]))  # drops duplicates, keeps order


def sweep(model: AdaViT, dataset: Dataset, points: Sequence[Settings], *, batch_size: int = 32,
          workers: int = 0, latency_runs: int = LATENCY_RUNS, progress: bool = True) -> list[EvalResult]:
    """One EvalResult per point, in order. Latency: median of `latency_runs` batch-1 forwards on one image."""
    names = class_names_of(model)
    loader = loader_for(dataset, batch_size, workers)
    device = device_of(model)
    probe = dataset[0][0]
    done: dict[Settings, EvalResult] = {}
    bar = tqdm(total=len(points), desc="sweep", unit="point", disable=not progress)
    with bar:
        for fine_ratio in dict.fromkeys(p.fine_ratio for p in points):
            caches = []
            with torch.inference_mode():
                for images, targets in tqdm(loader, desc=f"stage 1 @ fine_ratio {fine_ratio}",
                                            unit="batch", leave=False, disable=not progress):
                    caches.append((stage1_cache(model, images.to(device), fine_ratio), targets))
                for s in (p for p in points if p.fine_ratio == fine_ratio):
                    col = Collector(model)
                    for cache, targets in caches:
                        col.add(run_from_stage1(model, cache, s), targets)
                    latency = batch1_latency(model, [probe] * latency_runs, s, warmup=1) if latency_runs else None
                    done[s] = col.result(s, names, latency)
                    bar.set_postfix(top1=f"{done[s].top1:.3f}", gflops=f"{done[s].gflops_mean:.2f}")
                    bar.update()
            del caches  # one fine ratio's cache in memory at a time
    return [done[p] for p in points]


def resolution_baseline(model: AdaViT, dataset: Dataset, sides: Sequence[int], *, batch_size: int = 32,
                        workers: int = 0, latency_runs: int = LATENCY_RUNS, progress: bool = True) -> list[dict]:
    """Every token of the image resized to each side (core.strategies.Resolution): one record per side."""
    names = class_names_of(model)
    loader = loader_for(dataset, batch_size, workers)
    probe = dataset[0][0][None]
    out = []
    for side in tqdm(sides, desc="resolution baseline", unit="side", disable=not progress):
        strategy = Resolution((side, side))
        targets, preds, gflops, tokens = [], [], [], []
        with torch.inference_mode():
            for images, t in loader:
                o = strategy.forward(model, images)
                targets.append(t.numpy())
                preds.append(o.logits.argmax(1).numpy())
                gflops.append(outcome_gflops(model, o))
                tokens.append(o.tokens_per_stage.numpy())
            latency = (metrics.median_ms(lambda x, s=strategy: s.forward(model, x), [probe] * latency_runs, warmup=1)
                       if latency_runs else None)
        scores = metrics.classification(np.concatenate(targets), np.concatenate(preds), names)
        out.append({"strategy": "resolution", "side": side, "top1": scores["top1"],
                    "weighted_f1": scores["weighted_f1"], "gflops_mean": float(np.concatenate(gflops).mean()),
                    "latency_ms_b1": latency, "n_images": len(dataset),
                    "tokens_per_stage": [float(v) for v in np.concatenate(tokens).mean(0)]})
    return out


def pareto(cost: Sequence[float], acc: Sequence[float]) -> np.ndarray:
    """Indices of the points no other point beats (lower-or-equal cost and higher-or-equal accuracy,
    one of them strictly), sorted by cost."""
    cost, acc = np.asarray(cost, float), np.asarray(acc, float)
    keep = [i for i in range(len(cost))
            if not np.any((cost <= cost[i]) & (acc >= acc[i]) & ((cost < cost[i]) | (acc > acc[i])))]
    return np.array(sorted(keep, key=lambda i: (cost[i], -acc[i])), dtype=int)


def label(p: dict) -> str:
    name = "every token" if p["full"] else (f"fine {p['fine_ratio']:g}, keep {p['keep1']:g}/{p['keep2']:g}, "
                                            f"{p['mode']}{' + fuse' if p['fuse'] else ''}")
    tokens = "/".join(f"{t:.0f}" for t in p["tokens_per_stage"])
    return f"{name}<br>top-1 {100 * p['top1']:.2f}%, F1 {100 * p['weighted_f1']:.2f}%<br>tokens {tokens}"


def pareto_figure(points: list[dict], title: str = "AdaViT sweep", baseline: Sequence[dict] = ()) -> go.Figure:
    """Top-1 against mean GFLOPs (left) and batch-1 latency (right); fronts drawn, full-token point starred,
    the resolution baseline (`resolution_baseline` records) as a black line."""
    axes = [("gflops_mean", "mean GFLOPs per image"), ("latency_ms_b1", "batch-1 CPU latency (ms)")]
    fig = make_subplots(rows=1, cols=2, subplot_titles=[f"top-1 vs {t}" for _, t in axes], horizontal_spacing=0.08)
    acc = [100 * p["top1"] for p in points]
    text = [label(p) for p in points]
    for col, (key, axis_title) in enumerate(axes, start=1):
        measured = [i for i, p in enumerate(points) if p[key] is not None]
        cost = [points[i][key] for i in measured]
        first = col == 1
        fig.add_trace(go.Scatter(
            x=cost, y=[acc[i] for i in measured], mode="markers", name="setting",
            marker={"color": "lightgray", "size": 8, "line": {"color": "gray", "width": 1}},
            text=[text[i] for i in measured], hoverinfo="text", showlegend=first, legendgroup="all"),
            row=1, col=col)
        front = [measured[j] for j in pareto(cost, [acc[i] for i in measured])]
        fig.add_trace(go.Scatter(
            x=[points[i][key] for i in front], y=[acc[i] for i in front], mode="lines+markers",
            name="Pareto front", line={"color": "royalblue"}, marker={"size": 10},
            text=[text[i] for i in front], hoverinfo="text", showlegend=first, legendgroup="front"),
            row=1, col=col)
        full = [i for i in measured if points[i]["full"]]
        fig.add_trace(go.Scatter(
            x=[points[i][key] for i in full], y=[acc[i] for i in full], mode="markers", name="every token",
            marker={"symbol": "star", "size": 16, "color": "crimson"},
            text=[text[i] for i in full], hoverinfo="text", showlegend=first, legendgroup="full"),
            row=1, col=col)
        base = sorted((p for p in baseline if p.get(key) is not None), key=lambda p: p[key])
        if base:
            fig.add_trace(go.Scatter(
                x=[p[key] for p in base], y=[100 * p["top1"] for p in base], mode="lines+markers",
                name="resolution baseline (every token, smaller image)", line={"color": "black", "dash": "dot"},
                text=[f"{p['side']} px, every token<br>top-1 {100 * p['top1']:.2f}%" for p in base], hoverinfo="text",
                showlegend=first, legendgroup="resolution"), row=1, col=col)
        fig.update_xaxes(title_text=axis_title, row=1, col=col)
        fig.update_yaxes(title_text="top-1 (%)", row=1, col=col)
    fig.update_layout(title=title, width=1300, height=560, hovermode="closest")
    return fig


def records(results: list[EvalResult]) -> list[dict]:
    """One dict per point (the card's "sweep" entries), with Pareto membership for both costs."""
    full = Settings.full(results[0].settings.resolution) if results else None
    out = [{**r.summary(), "full": r.settings == full} for r in results]
    for key in ("gflops_mean", "latency_ms_b1"):
        measured = [i for i, p in enumerate(out) if p[key] is not None]
        front = {measured[j] for j in pareto([out[i][key] for i in measured], [out[i]["top1"] for i in measured])}
        for i, p in enumerate(out):
            p[f"pareto_{key.split('_')[0]}"] = i in front
    return out


def update_card(weights, points: list[dict], baseline: Sequence[dict] = ()) -> None:
    """Replace the card's "sweep" (and "sweep_resolution", the baseline) and keep every other key (atomic:
    a crash leaves the old card)."""
    card = checkpoint.read_card(weights)
    extra = {"sweep_resolution": list(baseline)} if baseline else {}
    metrics.write_json(checkpoint.card_path(weights), {**card, "sweep": points, **extra})


def floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.25,0.5,1, got {text!r}") from None


def extra_points(triples: Sequence[Sequence[float]], modes: Sequence[str], fuse: bool,
                 resolution: int) -> list[Settings]:
    for t in triples:
        if len(t) != 3:
            raise ValueError(f"--point takes fine_ratio,keep1,keep2 (three numbers), got {','.join(map(str, t))}")
    return [Settings(f, k1, k2, m, fuse, resolution) for f, k1, k2 in triples for m in modes]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adavit sweep", description=__doc__.split("\n\n")[0])
    add_model_args(p)
    g = p.add_argument_group("grid (the full-token point is always added)")
    g.add_argument("--fine-ratios", type=floats, default=[0.0, 0.25, 0.5, 1.0])
    g.add_argument("--keeps1", type=floats, default=[0.25, 0.5, 1.0])
    g.add_argument("--keeps2", type=floats, default=[0.25, 0.5, 1.0])
    g.add_argument("--modes", default="topk", help=f"comma-separated, from {', '.join(MODES)}")
    g.add_argument("--fuse", action="store_true", help="fuse dropped tokens at every point")
    g.add_argument("--point", type=floats, action="append", default=[], metavar="F,K1,K2",
                   help="one more (fine_ratio, keep1, keep2) point beyond the grid, e.g. the 8x-fewer-tokens "
                        "candidates; repeatable")
    p.add_argument("--latency-runs", type=int, default=LATENCY_RUNS,
                   help="batch-1 latency per point: median of N forwards on one image after a warm-up (0: skip)")
    p.add_argument("--resolutions", type=floats, default=[98, 112, 126, 140, 168, 196],
                   help="the resolution baseline: every token at these sides (multiples of 14; empty: skip)")
    p.add_argument("--update-card", action="store_true", help="write the points into the checkpoint card's \"sweep\"")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = cli.parse(parser(), argv)
    try:
        weights, card = checkpoint_card(args.checkpoint)  # grid and data fail fast, before the model loads
        resolution = args.resolution or settings_from(card).resolution
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        points = grid(args.fine_ratios, args.keeps1, args.keeps2, modes, args.fuse, resolution)
        points = list(dict.fromkeys(points + extra_points(args.point, modes, args.fuse, resolution)))
        ds, root = eval_dataset(args.data_root, "val", resolution, args.per_class, args.limit, args.download,
                                *card_data(card, args.data))
        model = checkpoint.load_model(weights)
        check_classes(model, ds)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    subset = args.per_class is not None or args.limit is not None
    if args.update_card and subset:
        print("warning: writing a subset's sweep into the card; the shipped card should hold the full val split",
              file=sys.stderr)
    results = sweep(model, ds, points, batch_size=args.batch_size, workers=args.workers,
                    latency_runs=args.latency_runs)
    pts = records(results)
    baseline = resolution_baseline(model, ds, [int(s) for s in args.resolutions], batch_size=args.batch_size,
                                   workers=args.workers, latency_runs=args.latency_runs)
    for b in baseline:
        print(f"resolution {b['side']:>3} px every token  top-1 {100 * b['top1']:6.2f}%  "
              f"GFLOPs {b['gflops_mean']:6.3f}  {b['latency_ms_b1'] or float('nan'):6.1f} ms")
    for p in pts:
        lat = "-" if p["latency_ms_b1"] is None else f"{p['latency_ms_b1']:.1f}"
        tokens = "/".join(f"{t:.0f}" for t in p["tokens_per_stage"])
        print(f"fine {p['fine_ratio']:<5g} keep {p['keep1']:<5g}{p['keep2']:<5g} {p['mode']:<6} "
              f"top-1 {100 * p['top1']:6.2f}%  F1 {100 * p['weighted_f1']:6.2f}%  GFLOPs {p['gflops_mean']:6.3f}  "
              f"{lat:>6} ms  tokens {tokens}{'  (every token)' if p['full'] else ''}")
    out = {"checkpoint": str(weights), "split": "val", "data_root": str(root), "n_images": len(ds),
           "subset": {"per_class": args.per_class, "limit": args.limit},
           "latency": {"runs": args.latency_runs, "threads": torch.get_num_threads(), "device": str(device_of(model))},
           "points": pts, "resolution_baseline": baseline}
    if args.json:
        print(f"wrote {metrics.write_json(args.json, out)}")
    if args.html:
        title = f"AdaViT sweep: Flowers-102 val, {len(ds)} images, {weights.name}"
        print(f"wrote {metrics.write_html(pareto_figure(pts, title, baseline), args.html)}")
    if args.update_card:
        update_card(weights, pts, baseline)
        print(f"updated \"sweep\" in {checkpoint.card_path(weights)}")
    return 0
