"""CPU latency: weight layouts that dodge a slow MKL path for short token sequences.

On x86 CPUs with torch's MKL, `F.linear(x, W)` for a row-major W (PyTorch's default) and x of
roughly 9..56 rows runs single-threaded and is ~2x slower on 2 threads than the same product with W
stored column-major (W.t() contiguous): ViT-S fc1 at 41 rows 0.88 -> 0.46 ms, fc2 1.15 -> 0.56 ms,
qkv 0.65 -> 0.38 ms (2 idle cores). At >= 57 rows both layouts cost about the same. After ATS the
last stage of AdaViT runs on ~30-40 tokens at batch 1, in the slow range, so its Linear weights are
stored column-major: ~7 % off the whole batch-1 forward (43 -> 40 ms at the trained default).
(MKL's packed GEMM, torch.ops.mkl._mkl_linear, wins in isolation but not end to end: not used.)

This changes memory layout only: values, parameter objects, state_dict keys and results stay the
same (up to float summation order, ~1e-6 relative), and autograd and optimisers accept any
strides. safetensors needs contiguous tensors, which `adavit.weights.checkpoint.save` already makes.

`python -m adavit latency` prints a micro-benchmark of both layouts by row count.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Iterable

import torch
from torch import nn

from ..core.config import PATCH, Settings
from ..core.sampler import ceil_tokens
from . import cli

SLOW_ROWS = range(9, 57)  # where row-major F.linear is slow on the machines we measured


def is_column_major(weight: torch.Tensor) -> bool:
    return weight.dim() == 2 and weight.t().is_contiguous() and not weight.is_contiguous()


def column_major(linear: nn.Linear) -> None:
    """Store the weight column-major, in place (same Parameter object, same values)."""
    with torch.no_grad():
        linear.weight.data = linear.weight.data.t().contiguous().t()


def row_major(linear: nn.Linear) -> None:
    """PyTorch's default layout again."""
    with torch.no_grad():
        linear.weight.data = linear.weight.data.contiguous()


def _linears(blocks: Iterable[nn.Module]) -> list[nn.Linear]:
    return [m for blk in blocks for m in blk.modules() if isinstance(m, nn.Linear)]


def batch1_tokens(settings: Settings, patch: int = PATCH, prefix: int = 1) -> tuple[int, ...]:
    """Tokens (prefix included) each AdaViT stage runs on for one square image in topk mode
    (an upper bound in sample mode, where the samplers may keep fewer)."""
    regions = (settings.resolution // (2 * patch)) ** 2
    n_fine = round(settings.fine_ratio * regions)  # as patching.split_mask rounds
    n = 4 * n_fine + regions - n_fine
    counts = [n]
    for keep in settings.sampling.keep:
        kept = ceil_tokens(n, keep)
        n = kept + int(settings.fuse and kept < n)
        counts.append(n)
    return tuple(c + prefix for c in counts)


def _stages_of(model) -> list[list[nn.Module]]:
    """AdaViT's stages, or those of a timm ViT patched by adavit."""
    if hasattr(model, "config") and hasattr(model, "stages"):
        return model.stages
    blocks = getattr(model, "blocks", None)
    if hasattr(blocks, "stages"):
        return blocks.stages()
    raise ValueError(f"{type(model).__name__} is neither an AdaViT nor a timm ViT patched by adavit.patch")


def optimize_for_cpu(model, settings: Settings = Settings(), stages: Iterable[int] | None = None) -> tuple[int, ...]:
    """Column-major Linear weights in the AdaViT stages that run in the slow row range at batch 1.

    By default the stages are picked from `settings` (at the defaults: the last stage, ~41 tokens
    at 224 px); pass `stages` (0-based) to choose, e.g. for a timm ViT patched by adavit.
    At batch 32 the same stages run on hundreds of rows, where the layout is neutral. Returns the
    stages changed; undo with `restore`. Call it after loading weights (loading keeps layouts).
    """
    all_stages = _stages_of(model)
    if stages is None:
        if not hasattr(model, "config"):
            raise ValueError("pass stages=... for a model that is not an AdaViT (its token counts are not known)")
        tokens = batch1_tokens(settings, getattr(model, "patch", PATCH), getattr(model, "num_prefix", 1))
        stages = [s for s, n in enumerate(tokens) if n in SLOW_ROWS]
    stages = tuple(sorted(set(int(s) for s in stages)))
    for s in stages:
        if not 0 <= s < len(all_stages):
            raise ValueError(f"stage {s} does not exist; the model has {len(all_stages)} stages")
        for lin in _linears(all_stages[s]):
            if not is_column_major(lin.weight):
                column_major(lin)
    return stages


def restore(model: nn.Module) -> int:
    """Row-major (contiguous) weights in every Linear again; returns how many changed."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear) and not m.weight.is_contiguous()]
    for lin in layers:
        row_major(lin)
    return len(layers)


# ---------------------------------------------------------------- micro-benchmark


def time_linear(rows: int, in_features: int, out_features: int, layout: str, repeats: int = 7) -> float:
    """Best-of-`repeats` milliseconds of one F.linear call at this shape and weight layout."""
    lin = nn.Linear(in_features, out_features)
    if layout == "column":
        column_major(lin)
    x = torch.randn(1, rows, in_features)
    calls = max(3, 3000 // rows)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(2):
            lin(x)
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(calls):
                lin(x)
            best = min(best, (time.perf_counter() - t) / calls * 1000)
    return best


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="adavit latency", description="row- vs column-major Linear weights, by token count (ViT-S widths)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--rows", type=int, nargs="+", default=[9, 17, 29, 41, 57, 81, 161, 257])
    args = cli.parse(p, argv)
    d = args.dim
    print(f"{torch.get_num_threads()} threads; best-of-7 ms per call (row-major / column-major)")
    for name, (i, o) in {"qkv": (d, 3 * d), "fc1": (d, 4 * d), "fc2": (4 * d, d)}.items():
        for rows in args.rows:
            r, c = time_linear(rows, i, o, "row"), time_linear(rows, i, o, "column")
            print(f"{name:4s} rows {rows:4d}: {r:7.3f} / {c:7.3f}  x{r / c:4.2f}", flush=True)
