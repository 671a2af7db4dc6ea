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
    local_mask: torch.Tensor | None = None,
    value_norm: bool = True,
    scorer: nn.Module | None = None,
) -> tuple[Tokens, torch.Tensor | None]:
    """Blocks of one stage (local attention on every other block when a window mask is given).

    value_norm=False scores by CLS attention alone (EViT) instead of ATS's attention x |V|.
    `scorer` (a `core.scorer.LearnedScorer`) scores the stage's output tokens instead."""
    pad = key_padding_mask(tokens.valid, tokens.num_prefix)
    sink: list[torch.Tensor] = []
    hook = _scores_hook(blocks[-1], sink) if score and scorer is None else None
    x = tokens.x
    try:
        for i, blk in enumerate(blocks):
            mask = local_mask if local_mask is not None and i % 2 == 0 else pad
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

    `boxes` (B, T, 4) and `width` locate stage-0 tokens for local windows (`windows[s]` px, 0 = off).
    `reducer(tokens, scores, keep, s)` replaces ATS's `reduce` (the peer strategies in core.strategies).
    `scorers[s]` scores the tokens at sampler s instead of CLS attention x |V| (a learned scorer).
    """
    if len(sampling.keep) != len(stages) - 1:
        raise ValueError(f"{len(stages)} stages need {len(stages) - 1} keep ratios, got {sampling.keep}")
    selections, counts = [], []
    for s in range(start, len(stages)):
        window = windows[s] if windows else 0
        local = None
        if window and boxes is not None:
            ids = window_ids(_centres(tokens, boxes), window, width)
            local = local_window_mask(ids, tokens.num_prefix, tokens.valid)
        counts.append(tokens.counts)
        last = s == len(stages) - 1
        scorer = scorers[s] if scorers is not None and not last else None
        tokens, scores = run_stage(stages[s], tokens, score=not last, local_mask=local, value_norm=value_norm,
                                   scorer=scorer)
        if not last:
            if reducer is None:
                tokens, sel = reduce(tokens, scores, sampling.keep[s], sampling.mode, sampling.fuse)
            else:
                tokens, sel = reducer(tokens, scores, sampling.keep[s], s)
            selections.append(sel)
    return StagesOut(tokens, selections, counts)
