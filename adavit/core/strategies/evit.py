"""EViT (Liang et al., ICLR 2022): keep the top-k tokens by CLS attention, fuse the rest into one token.

The score is the CLS row of the stage's last attention averaged over heads (no |V| factor, unlike
ATS); the fused token is the attention-weighted mean of the inattentive tokens, and it competes in
the next sampler like any other token. EViT prunes after blocks 4, 7 and 10 of DeiT; here the
positions are a setting (`split`), chosen per compute budget like every strategy's settings.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..sampler import Tokens, reduce
from .base import Outcome, prune


@dataclass(frozen=True)
class EViT:
    keep: tuple[float, float] = (0.5, 0.5)
    split: tuple[int, int, int] = (4, 4, 4)
    name = "evit"

    def reduce(self, tokens: Tokens, scores: torch.Tensor, keep: float, s: int):
        return reduce(tokens, scores, keep, "topk", True)

    def forward(self, model, images: torch.Tensor) -> Outcome:
        return prune(model, images, self.split, self.keep, self.reduce, value_norm=False)
