"""ATS as published (Fayyaz et al., ECCV 2022): inverse-transform sampling of the significance scores.

Written from the paper (Sec. 3.2) and its official code (adaptivetokensampling/ATS, ats_block.py):
1. significance S_j = A[cls, j] * |V_j|, normalised to sum to 1 (`sampler.significance`, shared);
2. sort the scores in *ascending* order and take their CDF, min-max normalised to [0, 1];
3. K evenly spaced points on the y axis, from the smallest non-zero CDF value to 1 (`create_ys`);
4. each point picks the token whose CDF value is *nearest* to it (`argmin |y - cdf|`);
5. duplicates are removed, so an image with peaked scores keeps fewer than K tokens: the count adapts.

K is the budget `ceil(keep * n)` patch tokens (the paper's K - 1 plus CLS). Two details of the
official code are not copied: it always lays out n_ref - 1 points (n_ref = the initial token count)
and then keeps the K - 1 lowest-ranked unique picks, which can drop the highest-scoring tokens; the
paper's K points are used here. AdaViT's own `sample` mode (core/sampler.py) is a different, cheaper
approximation: K midpoints (i + 0.5) / K on the descending CDF, first token at or above each.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..sampler import Tokens, budget, reduce
from .base import Outcome, prune


def inverse_transform_sampling(scores: torch.Tensor, valid: torch.Tensor, keep: float) -> torch.Tensor:
    """(B, N) bool: the tokens ATS keeps, at most ceil(keep * n) per image (padding never kept)."""
    k = budget(valid, keep)
    order = torch.sort(scores.masked_fill(~valid, -1.0), dim=1, stable=True).indices  # ascending, padding first
    ok = torch.gather(valid, 1, order)
    cdf = torch.gather(scores * valid, 1, order).to(torch.float64).cumsum(1)
    lowest = torch.gather(cdf, 1, (~valid).sum(1, keepdim=True).clamp_max(cdf.shape[1] - 1))
    span = cdf[:, -1:] - lowest
    ncdf = torch.where(span > 0, (cdf - lowest) / span.clamp_min(1e-300), torch.zeros_like(cdf))
    inf = torch.full_like(ncdf, float("inf"))
    start = torch.where(ok & (ncdf > 0), ncdf, inf).min(1, keepdim=True).values
    start = torch.where(torch.isfinite(start), start, torch.zeros_like(start))
    steps = torch.arange(int(k.max()), device=scores.device)[None]
    left = (k[:, None] - 1 - steps).clamp_min(0)  # points past K repeat y = 1 (a duplicate, removed)
    ys = 1 - (1 - start) * left / (k[:, None] - 1).clamp_min(1)
    dist = torch.where(ok[:, None], (ys[:, :, None] - ncdf[:, None]).abs(), inf[:, None])
    hit = dist.argmin(2)  # the first of equally near tokens, as torch.min in the official code
    picked = torch.zeros_like(valid).scatter_(1, hit, True)
    return torch.zeros_like(valid).scatter_(1, order, picked) & valid


@dataclass(frozen=True)
class ATS:
    keep: tuple[float, float] = (0.5, 0.5)  # K as a share of the tokens entering each sampler (an upper bound)
    split: tuple[int, int, int] = (4, 4, 4)
    name = "ats"
    adaptive = True  # the count depends on the image

    def reduce(self, tokens: Tokens, scores: torch.Tensor, keep: float, s: int):
        kept = inverse_transform_sampling(scores, tokens.valid_mask(), keep)
        return reduce(tokens, scores, keep, "topk", False, kept=kept)

    def forward(self, model, images: torch.Tensor) -> Outcome:
        return prune(model, images, self.split, self.keep, self.reduce)
