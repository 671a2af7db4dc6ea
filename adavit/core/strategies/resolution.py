"""The resolution baseline: every token of the image resized to a smaller side (any multiple of the patch).

The same weights, the position grid resampled to the new patch grid exactly as AdaViT resamples it
(`patching.position_grid`), and timm's blocks on every token. The input is the 224 px eval crop
resized with antialiasing, so every strategy sees the same field of view. Sides may differ by one
patch (e.g. 98 x 112) to land on budgets a square grid cannot. A hybrid checkpoint's windows keep
their side in patches (112 px = 8 patches of 14), so on a small image one window may hold it all.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import MAX_SIDE, Sampling
from ..patching import Layout, patch_size, position_grid, prefix_tokens
from ..sampler import Tokens
from ..stages import run_stages
from .base import Outcome, attention_of, from_stages


def every_token(vit, images: torch.Tensor) -> tuple[Tokens, Layout]:
    """All patches of `images` (sides multiples of the patch), prefix first, with resampled positions."""
    b, _, h, w = images.shape
    patch = patch_size(vit)
    gh, gw = h // patch, w // patch
    x = vit.patch_embed.proj(images).flatten(2).transpose(1, 2) + position_grid(vit, (gh, gw))
    prefix = prefix_tokens(vit).expand(b, -1, -1)
    ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    xy = torch.stack([xs, ys], -1).flatten(0, 1).float() * patch
    n = gh * gw
    layout = Layout(torch.cat([xy, xy + patch], 1).expand(b, -1, -1).to(images.device),
                    torch.ones(b, n, dtype=torch.long, device=images.device), torch.zeros(b, n), (h, w))
    x = vit.norm_pre(torch.cat([prefix, x], 1))
    src = torch.arange(n, device=images.device).expand(b, -1)
    return Tokens(x, src, None, prefix.shape[1]), layout


@dataclass(frozen=True)
class Resolution:
    size: tuple[int, int] = (112, 112)  # (H, W) the image is resized to
    name = "resolution"

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        if len(self.size) != 2 or any(s < 1 or s > MAX_SIDE for s in self.size):
            raise ValueError(f"resolution size must be (H, W), each between 1 and {MAX_SIDE} px, got {self.size}")

    def forward(self, model, images: torch.Tensor) -> Outcome:
        patch = patch_size(model.vit)
        if any(s % patch for s in self.size):
            raise ValueError(f"resolution size must be (H, W), each a multiple of {patch} px (the model's patch), "
                             f"got {self.size}; e.g. ({7 * patch}, {7 * patch}) or ({8 * patch}, {8 * patch})")
        x = images
        if tuple(images.shape[-2:]) != self.size:
            x = F.interpolate(images, size=self.size, mode="bilinear", antialias=True, align_corners=False)
        tokens, layout = every_token(model.vit, x)
        depth = len(model.vit.blocks)
        out = run_stages([list(model.vit.blocks)], tokens, Sampling(keep=()), **attention_of(model, layout))
        outcome = from_stages(model, out, layout, (depth,))
        outcome.image_size = tuple(images.shape[-2:])
        return outcome
