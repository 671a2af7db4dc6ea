"""Runs pretrained timm blocks in stages, with an ATS sampler between consecutive stages.

Shared by the AdaViT model and the one-call plug-in: both hand over timm blocks as they are.
Scores come from a forward hook on the last block's `attn.qkv`, so no timm forward is copied.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from .attention import key_padding_mask, local_window_mask, window_ids
from .config import Sampling
from .sampler import Selection, Tokens, reduce, significance

# a sampler between stages: (tokens, scores, keep, sampler index) -> (shorter tokens, what it decided)
Reducer = Callable[[Tokens, torch.Tensor, float, int], tuple[Tokens, Selection]]


@dataclass
class StagesOut:
    tokens: Tokens
    selections: list[Selection]  # one per sampler that ran
    counts: list[torch.Tensor]  # tokens (prefix included) entering each stage that ran, each (B,)


def split_blocks(blocks: Sequence[nn.Module], sizes: Sequence[int]) -> list[list[nn.Module]]:
    if sum(sizes) != len(blocks):
        raise ValueError(f"stage sizes {tuple(sizes)} must add up to the {len(blocks)} blocks")
    out, start = [], 0
    for n in sizes:
        out.append(list(blocks[start : start + n]))
        start += n
    return out


def _centres(tokens: Tokens, boxes: torch.Tensor) -> torch.Tensor:
    """(B, N, 2) centres of the tokens' boxes; NaN where a token has no box (fused, padding)."""
    src = tokens.src.clamp_min(0)
    b = torch.gather(boxes, 1, src.unsqueeze(-1).expand(-1, -1, 4))
    c = (b[..., :2] + b[..., 2:]) / 2
    return c.masked_fill((tokens.src < 0).unsqueeze(-1), float("nan"))


def _scores_hook(block: nn.Module, sink: list):
    attn = getattr(block, "attn", None)
    if attn is None or not isinstance(getattr(attn, "qkv", None), nn.Linear):
        raise TypeError(
            f"{type(block).__name__} has no `attn.qkv` Linear; ATS needs timm's standard Attention"
        )
    return attn.qkv.register_forward_hook(lambda _m, _i, out: sink.append(out))


def run_stage(
    blocks: Sequence[nn.Module],
    tokens: Tokens,
    *,
    score: bool,
    windows: Sequence[int] | None = None,
    boxes: torch.Tensor | None = None,
    width: int | None = None,
    value_norm: bool = True,
    scorer: nn.Module | None = None,
) -> tuple[Tokens, torch.Tensor | None]:
    """Blocks of one stage; block i attends within `windows[i]`-px cells when that is not 0.

    `boxes` (B, T, 4) and `width` locate the stage-0 tokens that `tokens.src` points to.
    value_norm=False scores by CLS attention alone (EViT) instead of ATS's attention x |V|.
    `scorer` (a `core.scorer.LearnedScorer`) scores the stage's output tokens instead."""
    windows = tuple(windows) if windows else (0,) * len(blocks)
    if len(windows) != len(blocks):
        raise ValueError(f"{len(windows)} windows for a stage of {len(blocks)} blocks")
    if any(windows) and boxes is None:
        raise ValueError("local windows need the tokens' boxes (the layout) to know which cell each token is in")
    pad = key_padding_mask(tokens.valid, tokens.num_prefix)
    masks = {0: pad}  # the tokens don't change within a stage, so each window's mask is built once
    for w in set(windows) - {0}:
        masks[w] = local_window_mask(window_ids(_centres(tokens, boxes), w, width), tokens.num_prefix, tokens.valid)
    sink: list[torch.Tensor] = []
    hook = _scores_hook(blocks[-1], sink) if score and scorer is None else None
    x = tokens.x
    try:
        for blk, w in zip(blocks, windows):
            mask = masks[w]
            x = blk(x) if mask is None else blk(x, attn_mask=mask)
    finally:
        if hook is not None:
            hook.remove()
    out = replace(tokens, x=x)
    if not score:
        return out, None
    if scorer is None:
        return out, significance(sink[-1], blocks[-1].attn, out, value_norm)
    p = out.num_prefix
    scores = scorer(x[:, p:], out.valid_mask())
    if torch.is_grad_enabled():  # straight through: the kept tokens carry the scores' gradient, 1 in value
        out = replace(out, x=torch.cat([x[:, :p], x[:, p:] * (1 + (scores - scores.detach())).unsqueeze(-1)], 1))
    return out, scores


def run_stages(
    stages: Sequence[Sequence[nn.Module]],
    tokens: Tokens,
    sampling: Sampling,
    *,
    start: int = 0,
    windows: Sequence[int] | None = None,
    boxes: torch.Tensor | None = None,
    width: int | None = None,
    reducer: Reducer | None = None,
    value_norm: bool = True,
    scorers: Sequence[nn.Module] | None = None,
) -> StagesOut:
    """Stages `start..` with a sampler after each stage but the last.

    `windows` has one entry per block of all the stages (`AdaViTConfig.block_windows`; None: global
    attention everywhere); `boxes` (B, T, 4) and `width` locate the stage-0 tokens for them.
    `reducer(tokens, scores, keep, s)` replaces ATS's `reduce` (the peer strategies in core.strategies).
    `scorers[s]` scores the tokens at sampler s instead of CLS attention x |V| (a learned scorer).
    """
    if len(sampling.keep) != len(stages) - 1:
        raise ValueError(f"{len(stages)} stages need {len(stages) - 1} keep ratios, got {sampling.keep}")
    bounds = [0]
    for stage in stages:
        bounds.append(bounds[-1] + len(stage))
    if windows is not None and len(windows) != bounds[-1]:
        raise ValueError(f"windows needs one entry per block ({bounds[-1]}), got {len(windows)}")
    selections, counts = [], []
    for s in range(start, len(stages)):
        counts.append(tokens.counts)
        last = s == len(stages) - 1
        scorer = scorers[s] if scorers is not None and not last else None
        tokens, scores = run_stage(stages[s], tokens, score=not last, value_norm=value_norm, scorer=scorer,
                                   windows=windows[bounds[s]:bounds[s + 1]] if windows else None,
                                   boxes=boxes, width=width)
        if not last:
            if reducer is None:
                tokens, sel = reduce(tokens, scores, sampling.keep[s], sampling.mode, sampling.fuse)
            else:
                tokens, sel = reducer(tokens, scores, sampling.keep[s], s)
            selections.append(sel)
    return StagesOut(tokens, selections, counts)
