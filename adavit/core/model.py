"""AdaViT: mixed-scale patching -> stage 1 -> ATS1 -> stage 2 -> ATS2 -> stage 3 -> CLS -> head.

The network is a plain timm VisionTransformer (`self.vit`): its blocks, norm and head run as timm
wrote them. Only the token set they see changes.
"""
from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
from torch import nn

from .config import PATCH, AdaViTConfig, Settings
from .patching import Layout, embed
from .sampler import Selection, Tokens
from .stages import StagesOut, run_stages, split_blocks
from .trace import Trace, build_traces

NATIVE_IMG_SIZE = 518  # the backbone's 37x37 position grid; resampled per input size at run time


@dataclass
class Prediction:
    logits: torch.Tensor  # (B, C)
    tokens_per_stage: torch.Tensor  # (B, 3) tokens each stage ran on, CLS included
    layout: Layout
    selections: list[Selection]
    features: torch.Tensor | None = None  # (B, D) what the head saw: out-of-distribution scores use it

    def traces(self) -> list[Trace]:
        return build_traces(self.layout, self.selections, self.tokens_per_stage)


class AdaViT(nn.Module):
    def __init__(self, vit: nn.Module, config: AdaViTConfig):
        super().__init__()
        if getattr(vit, "num_prefix_tokens", 1) != 1 or getattr(vit, "global_pool", "token") != "token":
            raise ValueError("AdaViT needs a ViT with one CLS token and CLS pooling (e.g. vit_small_patch14_dinov2); "
                             "for registers or other pooling use the plug-in, adavit.patch(model)")
        patch = tuple(getattr(getattr(vit, "patch_embed", None), "patch_size", ()))
        if patch != (PATCH, PATCH):
            raise ValueError(f"AdaViT's mixed-scale patching is built for {PATCH} px patches (28 px regions); this "
                             f"ViT has {patch or 'no'} patches; use the plug-in, adavit.patch(model), for it")
        self.vit = vit
        self.config = config
        split_blocks(vit.blocks, config.stages)  # fail early on a bad stage split

    @classmethod
    def create(cls, config: AdaViTConfig = AdaViTConfig()) -> AdaViT:
        """Random weights at the backbone's native position grid; load a state dict into it."""
        vit = timm.create_model(
            config.model_name, pretrained=False, num_classes=config.num_classes, img_size=NATIVE_IMG_SIZE
        )
        if config.pool == "cls+mean":
            vit.head = nn.Linear(2 * vit.embed_dim, config.num_classes)
        return cls(vit, config).eval()

    @property
    def stages(self) -> list[list[nn.Module]]:
        return split_blocks(self.vit.blocks, self.config.stages)

    def tokenize(self, images: torch.Tensor, fine_ratio: float) -> tuple[Tokens, Layout]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        x, layout = embed(self.vit, images, fine_ratio)
        src = torch.arange(x.shape[1] - 1, device=x.device).expand(x.shape[0], -1)
        return Tokens(x, src, None), layout

    def run(self, tokens: Tokens, layout: Layout, settings: Settings, start: int = 0) -> StagesOut:
        """Stages `start..3` with their samplers (start=1 resumes from cached stage-1 output)."""
        return run_stages(
            self.stages, tokens, settings.sampling, start=start,
            windows=self.config.windows, boxes=layout.boxes, width=layout.size[1],
        )

    def features(self, tokens: Tokens) -> torch.Tensor:
        """What the head sees: the final-norm CLS token, with the mean of the valid tokens for cls+mean."""
        z = self.vit.norm(tokens.x)
        if self.config.pool == "cls":
            return z[:, 0]
        valid = tokens.valid_mask().to(z.dtype).unsqueeze(-1)
        return torch.cat([z[:, 0], (z[:, 1:] * valid).sum(1) / valid.sum(1)], -1)

    def classify(self, tokens: Tokens) -> torch.Tensor:
        return self.vit.head(self.features(tokens))

    def forward(self, images: torch.Tensor, settings: Settings = Settings()) -> Prediction:
        tokens, layout = self.tokenize(images, settings.fine_ratio)
        out = self.run(tokens, layout, settings)
        feats = self.features(out.tokens)
        return Prediction(self.vit.head(feats), torch.stack(out.counts, 1), layout, out.selections, feats)
