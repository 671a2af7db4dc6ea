"""The interface every token-reduction strategy shares, and the pruning skeleton four of them use.

A strategy is a small frozen dataclass (its settings) with `forward(model, images) -> Outcome`. The
model is always the same AdaViT checkpoint: its timm blocks, norm and head; only the token set changes.
Pruning strategies (random, EViT, ATS, AdaViT) differ in one function, `reduce`: it takes the tokens
and their scores after a stage and returns the shorter tokens and a `Selection` the trace can draw.
ToMe returns merge groups instead, and the resolution baseline neither.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import Sampling
from ..patching import Layout, patch_embeddings, patch_size
from ..sampler import Selection
from ..stages import run_stages, split_blocks

DEPTH_HINT = "stage sizes must be positive and add up to the model's blocks (12 for ViT-S/14)"


@dataclass
class Outcome:
    """One batch under one strategy: logits plus everything FLOPs and drawings need, per image."""

    logits: torch.Tensor  # (B, C)
    tokens_per_block: torch.Tensor  # (B, depth) tokens each block ran on, CLS included
    layout: Layout  # the stage-0 tokens (boxes in model-input pixels of `size`)
    embedded: torch.Tensor  # (B,) patch projections the tokenizer ran (core.patching.patch_embeddings)
    selections: list[Selection] = field(default_factory=list)  # pruning: one per sampler
    scored: torch.Tensor | None = None  # (B, S) tokens (CLS incl.) entering each scored sampler
    fused: torch.Tensor | None = None  # (B, S) bool: sampler s built a fused token
    merges: torch.Tensor | None = None  # (B, M) tokens (CLS incl.) entering each ToMe matching
    learned_scores: bool = False  # the samplers used the checkpoint's learned scorers (AdaViT only)
    groups: torch.Tensor | None = None  # (B, T) ToMe: final slot (CLS = 0) of each stage-0 token
    image_size: tuple[int, int] = (0, 0)  # the (H, W) the strategy was given; layout.size may be smaller

    @property
    def tokens_per_stage(self) -> torch.Tensor:
        """(B, 3) tokens entering blocks 0, depth/3 and 2*depth/3: comparable across strategies."""
        d = self.tokens_per_block.shape[1]
        return self.tokens_per_block[:, [0, d // 3, 2 * d // 3]]

    def final_tokens(self) -> torch.Tensor:
        return self.tokens_per_block[:, -1]


def per_block(counts: list[torch.Tensor], sizes: tuple[int, ...]) -> torch.Tensor:
    """Tokens entering each stage (list of (B,)) -> tokens each block ran on, (B, depth)."""
    return torch.stack([c for c, n in zip(counts, sizes, strict=True) for _ in range(n)], 1)


def embedded(layout: Layout, patch: int) -> torch.Tensor:
    """How many patch projections the AdaViT tokenizer ran per image (patching.patch_embeddings)."""
    h, w = layout.size
    grid = (h // patch) * (w // patch)
    fine, coarse = (layout.scales == 1).any(1).tolist(), (layout.scales == 2).any(1).tolist()
    n = [patch_embeddings(grid, layout.scales.shape[1], f, c, layout.gate_logits is not None)
         for f, c in zip(fine, coarse, strict=True)]
    return torch.tensor(n, device=layout.scales.device)


def attention_of(model, layout: Layout) -> dict:
    """The checkpoint's own attention for `run_stages`: its windows per block (a hybrid GC-ViT stage 1
    stays hybrid whatever stages a strategy splits the blocks into) and where the tokens sit."""
    return {"windows": model.config.block_windows, "boxes": layout.boxes, "width": layout.size[1]}


def check_split(model, split: tuple[int, ...], n_keep: int) -> None:
    if len(split) != n_keep + 1 or min(split) < 1 or sum(split) != len(model.vit.blocks):
        raise ValueError(f"split {split} with {n_keep} keep ratios: {DEPTH_HINT}, one more stage than keep ratios")


def prune(model, images: torch.Tensor, split: tuple[int, ...], keep: tuple[float, ...], reducer,
          *, fine_ratio: float = 1.0, value_norm: bool = True) -> Outcome:
    """Tokenize (every patch by default), then the blocks in `split` stages with `reducer` between."""
    check_split(model, split, len(keep))
    tokens, layout = model.tokenize(images, fine_ratio)
    out = run_stages(split_blocks(model.vit.blocks, split), tokens, Sampling(keep), reducer=reducer,
                     value_norm=value_norm, **attention_of(model, layout))
    return from_stages(model, out, layout, split)


def from_stages(model, out, layout: Layout, split: tuple[int, ...], *, learned_scores: bool = False) -> Outcome:
    sels = out.selections
    return Outcome(
        logits=model.classify(out.tokens),
        tokens_per_block=per_block(out.counts, split),
        layout=layout,
        embedded=embedded(layout, patch_size(model.vit)),
        selections=sels,
        scored=torch.stack(out.counts[:-1], 1) if sels else None,
        fused=torch.stack([s.fused.any(1) for s in sels], 1) if sels else None,
        image_size=layout.size,
        learned_scores=learned_scores and bool(sels),
    )
