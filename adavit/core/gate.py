"""A learned gate (MSViT, Havtorn et al. 2023) beside the parameter-free detail score.

A small MLP reads each region's coarse token (the region resized to one patch, through the
pretrained patch embedding, plus its position) and scores "split this region into fine tokens".
The fine-ratio slider still decides how many regions split; the gate decides which, by rank, so
inference is deterministic and a batch equals its images run alone.

Training: the split is a hard decision, so its gradient passes straight through (Bengio et al.):
each chosen token is multiplied by `hard + p - p.detach()` (1 in value), where p = sigmoid(score)
is the region's split probability. The batch-shaping loss (`train.gate_loss`) pulls those
probabilities toward a relaxed-Bernoulli prior whose mean is the target fine share, so the gate's
own decision (p > 0.5) splits about that share of regions.
"""
from __future__ import annotations

import torch
from torch import nn


class LearnedGate(nn.Module):
    def __init__(self, dim: int, hidden: int = 96, depth: int = 4):
        super().__init__()
        if depth < 1:
            raise ValueError(f"the gate needs at least one layer, got depth {depth}")
        layers: list[nn.Module] = [nn.LayerNorm(dim)]
        width = dim
        for _ in range(depth - 1):  # MSViT's gate: a 4-layer MLP
            layers += [nn.Linear(width, hidden), nn.GELU()]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, coarse: torch.Tensor) -> torch.Tensor:
        """(B, R, D) coarse tokens with positions -> (B, R) split logits."""
        return self.mlp(coarse).squeeze(-1)


def straight_through(split: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The hard decision in value, the gradient of sigmoid(logits) backwards: (B, R) float."""
    p = logits.sigmoid()
    return split.to(p.dtype) + (p - p.detach())
