"""Random token dropping: the control. Same counts as top-k, tokens chosen by a seeded coin, not a score.

The random scores are a seeded hash of (stage-0 token position, sampler), the same in a batch as for
one image alone, so a batch gives exactly what each image gives alone. Every image drops the same
positions: a fixed random mask, the plainest control for "does the score matter".
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..sampler import Tokens, reduce
from .base import Outcome, prune


def coin_flips(src: torch.Tensor, seed: int) -> torch.Tensor:
    """U(0, 1)-like numbers in (0, 1) from integer positions (the sin-hash of shader noise); 0 where src < 0."""
    t = src.to(torch.float64) * 12.9898 + (seed + 1) * 78.233
    u = torch.frac(torch.sin(t).abs() * 43758.5453) * 0.998 + 0.001
    return torch.where(src >= 0, u, torch.zeros_like(u))


@dataclass(frozen=True)
class RandomDrop:
    keep: tuple[float, float] = (0.5, 0.5)
    split: tuple[int, int, int] = (4, 4, 4)  # blocks per stage; a sampler between consecutive stages
    seed: int = 0
    name = "random"

    def reduce(self, tokens: Tokens, scores: torch.Tensor, keep: float, s: int):
        coin = coin_flips(tokens.src, self.seed * 7 + s).to(scores.dtype)
        return reduce(tokens, coin * tokens.valid_mask(), keep, "topk", False)

    def forward(self, model, images: torch.Tensor) -> Outcome:
        return prune(model, images, self.split, self.keep, self.reduce)
