"""A timm VisionTransformer patched by `adavit.patch`, behind AdaViT's interface for the app.

The plug-in decides where ATS1 and ATS2 sit (`model.blocks.stages()`, equal stages by default) and
checks that the model fits; this adapter adds what the app needs and the patched forward does not
return: the per-stage selections (traces), a stage-1 cache entry point and AdaViT's `tokenize /
run / classify` split. It runs the plug-in's stages with `stages.run_stages`, the code the patched
forward runs, so `model(x, settings)` gives the patched model's logits at the same sampling.
Plain fixed-size patches: there is no mixed-scale gate, so the fine ratio does not apply.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import AdaViTConfig, Settings
from .model import Prediction
from .patching import Layout
from .sampler import Tokens
from .stages import StagesOut, run_stages, split_blocks


def three_stages(depth: int) -> tuple[int, int, int]:
    base = depth // 3
    return (base, base, depth - 2 * base)


class UniformViT(nn.Module):
    def __init__(self, vit: nn.Module, name: str = "timm ViT"):
        super().__init__()
        if getattr(vit, "cls_token", None) is None or getattr(vit, "global_pool", "token") != "token":
            raise ValueError(f"{name} has no CLS token or pools without it ({getattr(vit, 'global_pool', '?')!r}); "
                             "the app's ATS view needs CLS pooling (e.g. deit_small_patch16_224)")
        if len(vit.blocks) < 3:
            raise ValueError(f"{name} has {len(vit.blocks)} blocks; three stages need at least 3")
        from .plugin import is_patched

        self.vit = vit
        self.patch = int(vit.patch_embed.patch_size[0])
        self.region = 2 * self.patch
        self.num_prefix = int(vit.num_prefix_tokens)
        sizes = tuple(len(s) for s in vit.blocks.stages()) if is_patched(vit) else three_stages(len(vit.blocks))
        if len(sizes) != 3:
            raise ValueError(f"{name} is patched with {len(sizes) - 1} samplers; "
                             "the app shows exactly two (ATS1, ATS2)")
        self.config = AdaViTConfig(num_classes=int(vit.num_classes), stages=sizes, model_name=name)

    def scorer(self, s: int) -> None:
        return None  # ATS's parameter-free score: a timm ViT has no learned scorer

    @property
    def stages(self) -> list[list[nn.Module]]:
        return split_blocks(list(self.vit.blocks), self.config.stages)

    def tokenize(self, images: torch.Tensor, fine_ratio: float = 1.0) -> tuple[Tokens, Layout]:
        """All patches at the model's own size; the input is resized to a multiple of the patch if needed."""
        b, _, h, w = images.shape
        gh, gw = max(1, round(h / self.patch)), max(1, round(w / self.patch))
        size = (gh * self.patch, gw * self.patch)
        if size != (h, w):
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        x = self.vit.patch_embed(images)
        x = self.vit.norm_pre(self.vit.patch_drop(self.vit._pos_embed(x)))
        ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        xy = torch.stack([xs, ys], -1).flatten(0, 1).float() * self.patch
        boxes = torch.cat([xy, xy + self.patch], 1).expand(b, -1, -1)
        n = gh * gw
        layout = Layout(boxes, torch.ones(b, n, dtype=torch.long), torch.zeros(b, n), size)
        return Tokens(x, torch.arange(n).expand(b, -1), None, self.num_prefix), layout

    def run(self, tokens: Tokens, layout: Layout, settings: Settings, start: int = 0) -> StagesOut:
        return run_stages(self.stages, tokens, settings.sampling, start=start)

    def features(self, tokens: Tokens) -> torch.Tensor:
        """What the head sees: timm's pooling and fc_norm of the final-norm tokens."""
        return self.vit.forward_head(self.vit.norm(tokens.x), pre_logits=True)

    def classify(self, tokens: Tokens) -> torch.Tensor:
        return self.vit.head(self.features(tokens))

    def forward(self, images: torch.Tensor, settings: Settings | None = None) -> Prediction:
        settings = settings or Settings()
        tokens, layout = self.tokenize(images, settings.fine_ratio)
        out = self.run(tokens, layout, settings)
        feats = self.features(out.tokens)
        return Prediction(self.vit.head(feats), torch.stack(out.counts, 1), layout, out.selections, feats)
