"""(Generalized) batch-shaping loss for the learned gate (Bejnordi et al. 2020; MSViT's GBaS).

The empirical CDF of the gate's split probabilities is pulled toward the CDF of a prior. With a
relaxed-Bernoulli prior RB(mean, temperature) that CDF has a closed form,
    F(x) = sigmoid(temperature * logit(x) - logit(mean)),
and P(x > 0.5) = mean exactly: a gate that matches the prior splits `mean` of its regions on its own.
Written from the paper and the reference code (Qualcomm-AI-research/batchshaping).
`per_image=True` is the generalized form: one CDF per image, so every image, not only the batch,
meets the share.
"""
from __future__ import annotations

import math

import torch


def relaxed_bernoulli_cdf(x: torch.Tensor, mean: float, temperature: float, eps: float = 1e-3) -> torch.Tensor:
    x = x.clamp(eps, 1 - eps)
    return torch.sigmoid(temperature * torch.logit(x) - math.log(mean / (1 - mean)))


def batch_shaping(probs: torch.Tensor, target: float, temperature: float = 0.5,
                  per_image: bool = True) -> torch.Tensor:
    """probs (B, R) split probabilities -> mean squared gap between their empirical CDF and the prior's."""
    if not 0.0 < target < 1.0:
        raise ValueError(f"the gate's target fine share must be in (0, 1), got {target}")
    x = probs if per_image else probs.reshape(1, -1)
    x = torch.sort(x, dim=-1).values
    n = x.shape[-1]
    ecdf = torch.arange(1, n + 1, device=x.device, dtype=x.dtype) / (n + 1)
    return ((ecdf - relaxed_bernoulli_cdf(x, target, temperature)) ** 2).sum(-1).div(n).mean()
