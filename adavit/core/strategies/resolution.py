"""The resolution baseline: every token of the image resized to a smaller side (any multiple of 14 px).

The same weights, the position grid resampled to the new patch grid exactly as AdaViT resamples it
(`patching.position_grid`), and timm's blocks on every token. The input is the 224 px eval crop
resized with antialiasing, so every strategy sees the same field of view. Sides may differ by one
patch (e.g. 98 x 112) to land on budgets a square grid cannot.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import MAX_SIDE, PATCH, Sampling
from ..patching import Layout, position_grid
from ..sampler import Tokens
from ..stages import run_stages
from .base import Outcome, from_stages


def every_token(vit, images: torch.Tensor) -> tuple[Tokens, Layout]:
    """All 14 px patches of `images` (sides multiples of 14), CLS first, with resampled positions."""
    b, _, h, w = images.shape
    gh, gw = h // PATCH, w // PATCH
    x = vit.patch_embed.proj(images).flatten(2).transpose(1, 2) + position_grid(vit.pos_embed, (gh, gw))
    cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(b, -1, -1)
    ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    xy = torch.stack([xs, ys], -1).flatten(0, 1).float() * PATCH
    n = gh * gw
    layout = Layout(torch.cat([xy, xy + PATCH], 1).expand(b, -1, -1).to(images.device),
                    torch.ones(b, n, dtype=torch.long, device=images.device), torch.zeros(b, n), (h, w))
    return Tokens(torch.cat([cls, x], 1), torch.arange(n, device=images.device).expand(b, -1), None), layout


@dataclass(frozen=True)
class Resolution:
    size: tuple[int, int] = (112, 112)  # (H, W) the image is resized to
    name = "resolution"

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        if len(self.size) != 2 or any(s < PATCH or s % PATCH or s > MAX_SIDE for s in self.size):
            raise ValueError(f"resolution size must be (H, W), each a multiple of {PATCH} px between {PATCH} "
                             f"and {MAX_SIDE}, got {self.size}; e.g. (98, 98), (112, 112) or (168, 168)")

    def forward(self, model, images: torch.Tensor) -> Outcome:
        x = images
        if tuple(images.shape[-2:]) != self.size:
            x = F.interpolate(images, size=self.size, mode="bilinear", antialias=True, align_corners=False)
        tokens, layout = every_token(model.vit, x)
        depth = len(model.vit.blocks)
        out = run_stages([list(model.vit.blocks)], tokens, Sampling(keep=()))
        outcome = from_stages(model, out, layout, (depth,))
        outcome.image_size = tuple(images.shape[-2:])
        return outcome
