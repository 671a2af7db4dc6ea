"""ATS: parameter-free token significance, top-k / inverse-transform sampling, EViT-style fusion.

Significance of token j (Fayyaz et al. 2022): S_j = A[cls, j] * |V_j| / sum_i A[cls, i] * |V_i|,
with A the CLS row of the stage's last attention, averaged over heads. Kept tokens are gathered
into a shorter tensor (not masked), so later blocks really do less work.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FUSED = -2  # `src` of a token that is the fusion of dropped tokens
PAD = -1  # `src` of a padding slot


@dataclass
class Tokens:
    """A batch of token sequences: P prefix tokens (CLS) then N patch tokens, possibly padded."""

    x: torch.Tensor  # (B, P+N, D)
    src: torch.Tensor  # (B, N) index of the stage-0 patch token, or FUSED / PAD
    valid: torch.Tensor | None  # (B, N) bool; None when no slot is padding
    num_prefix: int = 1

    @property
    def counts(self) -> torch.Tensor:
        """Tokens per image, prefix included: (B,)."""
        n = self.src.shape[1] if self.valid is None else self.valid.sum(1)
        return torch.as_tensor(n, device=self.x.device).expand(self.x.shape[0]) + self.num_prefix

    def valid_mask(self) -> torch.Tensor:
        return self.src.new_ones(self.src.shape, dtype=torch.bool) if self.valid is None else self.valid


@dataclass
class Selection:
    """What one sampler decided, aligned with the tokens that entered it."""

    src: torch.Tensor  # (B, N)
    valid: torch.Tensor  # (B, N)
    scores: torch.Tensor  # (B, N) significance, 0 on padding, sums to 1 per image
    kept: torch.Tensor  # (B, N) bool
    fused: torch.Tensor  # (B, N) bool: dropped tokens merged into this sampler's fused token


def significance(qkv: torch.Tensor, attn, tokens: Tokens, value_norm: bool = True) -> torch.Tensor:
    """Scores (B, N) from the qkv projection output (B, P+N, 3*D) of a timm Attention module.

    value_norm=False gives EViT's score: the CLS attention alone (averaged over heads)."""
    b, m, _ = qkv.shape
    q, k, v = qkv.reshape(b, m, 3, attn.num_heads, attn.head_dim).unbind(2)
    q, k = attn.q_norm(q), attn.k_norm(k)
    logits = torch.einsum("bhd,bmhd->bhm", q[:, 0], k) * attn.scale
    valid = tokens.valid_mask()
    p = tokens.num_prefix
    if tokens.valid is not None:
        logits[:, :, p:] = logits[:, :, p:].masked_fill(~valid[:, None], float("-inf"))
    cls_attn = logits.softmax(-1).mean(1)[:, p:]
    score = cls_attn * v[:, p:].flatten(2).norm(dim=-1) if value_norm else cls_attn
    score = score * valid
    return score / score.sum(1, keepdim=True).clamp_min(torch.finfo(score.dtype).tiny)


def budget(valid: torch.Tensor, keep: float) -> torch.Tensor:
    """K = ceil(keep * n) per image, at least one."""
    n = valid.sum(1)
    # the epsilon keeps ratios like 0.3 * 10 from rounding up to 4 through float error
    return torch.ceil(n.to(torch.float64) * keep - 1e-9).long().clamp_min(1).minimum(n)


def select(scores: torch.Tensor, valid: torch.Tensor, keep: float, mode: str) -> torch.Tensor:
    """Which tokens stay: (B, N) bool."""
    k = budget(valid, keep)
    order = torch.sort(scores.masked_fill(~valid, -1.0), dim=1, descending=True, stable=True).indices
    if mode == "topk":
        picked_sorted = torch.arange(scores.shape[1], device=scores.device)[None] < k[:, None]
    else:  # "sample": deterministic inverse-transform sampling of the score distribution
        cdf = torch.gather(scores, 1, order).cumsum(1)
        kmax = int(k.max())
        steps = torch.arange(kmax, device=scores.device)[None]
        u = (steps + 0.5) / k[:, None]
        hit = torch.searchsorted(cdf.contiguous(), u.to(cdf.dtype).contiguous())
        hit = hit.minimum(valid.sum(1, keepdim=True) - 1)
        hit = torch.where(steps < k[:, None], hit, hit[:, :1])  # unused steps repeat a real pick
        picked_sorted = torch.zeros_like(valid).scatter_(1, hit, True)
    return torch.zeros_like(valid).scatter_(1, order, picked_sorted) & valid


def _gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return torch.gather(t, 1, idx if t.dim() == 2 else idx.unsqueeze(-1).expand(-1, -1, t.shape[-1]))


def reduce(tokens: Tokens, scores: torch.Tensor, keep: float, mode: str, fuse: bool,
           kept: torch.Tensor | None = None) -> tuple[Tokens, Selection]:
    """Keep the selected tokens (in their original order), optionally plus one fused token.

    `kept` (B, N) bool overrides `select(scores, valid, keep, mode)` for samplers with their own rule."""
    valid = tokens.valid_mask()
    kept = select(scores, valid, keep, mode) if kept is None else kept & valid
    dropped = valid & ~kept
    n_kept = kept.sum(1)
    has_fused = dropped.any(1) if fuse else torch.zeros_like(n_kept, dtype=torch.bool)
    length = int((n_kept + has_fused).max())
    p = tokens.num_prefix
    order = torch.sort(kept.to(torch.int8), dim=1, descending=True, stable=True).indices
    idx = order[:, :length]  # a fused token only exists when something was dropped, so length <= N
    patch_x = _gather(tokens.x[:, p:], idx)
    src = _gather(tokens.src, idx)
    slots = torch.arange(length, device=idx.device)[None]
    if fuse and bool(has_fused.any()):  # skipped when nothing was dropped: at batch 1 the einsum runs iff
        w = (scores * dropped).to(patch_x.dtype)  # the image gets a fused token (flops.image_gflops relies on it)
        fused_x = torch.einsum("bn,bnd->bd", w, tokens.x[:, p:]) / w.sum(1, keepdim=True).clamp_min(1e-12)
        at = (slots == n_kept[:, None]) & has_fused[:, None]
        patch_x = torch.where(at[..., None], fused_x[:, None], patch_x)
        src = torch.where(at, torch.full_like(src, FUSED), src)
    new_valid = slots < (n_kept + has_fused)[:, None]
    src = src.masked_fill(~new_valid, PAD)
    out = Tokens(
        x=torch.cat([tokens.x[:, :p], patch_x], 1),
        src=src,
        valid=None if bool(new_valid.all()) else new_valid,
        num_prefix=p,
    )
    fused = dropped & has_fused[:, None]
    return out, Selection(tokens.src, valid, scores, kept, fused)


def ceil_tokens(n: int, keep: float) -> int:
    """Tokens a top-k sampler keeps out of n (for FLOP tables and tests)."""
    return max(1, min(n, math.ceil(n * keep - 1e-9)))
