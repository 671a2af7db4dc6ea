"""Attention masks that let timm's own blocks run on padded, mixed-scale token sets.

timm's `Block.forward(x, attn_mask=...)` hands the mask to scaled_dot_product_attention, so the
pretrained blocks are reused untouched; here we only build the boolean masks (True = may attend).
"""
from __future__ import annotations

import torch


def key_padding_mask(valid: torch.Tensor | None, num_prefix: int) -> torch.Tensor | None:
    """(B, 1, 1, P+N) mask hiding padded keys; None when nothing is padded (the fast path)."""
    if valid is None:
        return None
    prefix = valid.new_ones(valid.shape[0], num_prefix)
    return torch.cat([prefix, valid], 1)[:, None, None, :]


def window_ids(centres: torch.Tensor, window: int, width: int) -> torch.Tensor:
    """Window cell of each token centre (B, N, 2) in pixels; -1 for tokens without a place."""
    cols = -(-width // window)
    cell = torch.div(centres, window, rounding_mode="floor").long()
    ids = cell[..., 1] * cols + cell[..., 0]
    return torch.where(torch.isfinite(centres).all(-1), ids, torch.full_like(ids, -1))


def local_window_mask(ids: torch.Tensor, num_prefix: int, valid: torch.Tensor | None) -> torch.Tensor:
    """(B, 1, P+N, P+N): a token attends to the tokens whose centres share its window cell.

    Prefix tokens (CLS) attend to and are attended by everything: they carry global context
    into every window. Tokens without a place (a fused token, id -1) are global in the same way.
    """
    b, n = ids.shape
    ids = torch.cat([ids.new_full((b, num_prefix), -1), ids], 1)
    glob = ids < 0
    mask = (ids[:, :, None] == ids[:, None, :]) | glob[:, :, None] | glob[:, None, :]
    pad = key_padding_mask(valid, num_prefix)
    if pad is not None:
        mask = mask & pad[:, 0]
    return mask[:, None]
