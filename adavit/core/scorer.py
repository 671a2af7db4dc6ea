"""A learned token scorer (DynamicViT's prediction module) beside ATS's CLS-attention x |V| score.

Each token's feature is split into a local half and a global half; the global half is averaged
over the image's real tokens and joined back to every token, and an MLP scores "keep this token".
Scores are a softmax over the image's tokens, so they sum to 1 like ATS's and feed the same top-k,
inverse-transform sampling and fusion. In training the kept tokens carry the scores' gradient
straight through (`stages.run_stage` multiplies them by `1 + (s - s.detach())`, exactly 1 in value), as
the learned gate does for regions.
"""
from __future__ import annotations

import torch
from torch import nn


class LearnedScorer(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.embed = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.mlp = nn.Sequential(nn.Linear(dim, dim // 2), nn.GELU(), nn.Linear(dim // 2, dim // 4), nn.GELU(),
                                 nn.Linear(dim // 4, 1))

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, N, D) and their valid mask (B, N) -> scores (B, N), 0 on padding, sum 1."""
        h = self.embed(x)
        half = h.shape[-1] // 2
        w = valid.unsqueeze(-1).to(h.dtype)
        glob = (h[..., half:] * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1)
        logits = self.mlp(torch.cat([h[..., :half], glob.expand(-1, h.shape[1], -1)], -1)).squeeze(-1)
        return logits.masked_fill(~valid, float("-inf")).softmax(-1)
