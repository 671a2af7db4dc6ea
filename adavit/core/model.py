"""AdaViT: mixed-scale patching -> stage 1 -> ATS1 -> stage 2 -> ATS2 -> stage 3 -> CLS -> head.

The network is a plain timm VisionTransformer (`self.vit`): its blocks, norm and head run as timm
wrote them. Only the token set they see changes. Any timm ViT with a CLS token, standard attention
and absolute positions fits: the patch size (and with it the region, 2x2 patches) comes from its
patch embedding, and its prefix tokens (CLS, registers, a distillation token) ride through every
stage, never scored and never dropped.
"""
from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
from torch import nn

from .config import AdaViTConfig, Settings
from .gate import LearnedGate
from .patching import Layout, embed, patch_size
from .sampler import Selection, Tokens
from .scorer import LearnedScorer
from .stages import StagesOut, run_stages, split_blocks
from .trace import Trace, build_traces


@dataclass
class Prediction:
    logits: torch.Tensor  # (B, C)
    tokens_per_stage: torch.Tensor  # (B, 3) tokens each stage ran on, CLS included
    layout: Layout
    selections: list[Selection]
    features: torch.Tensor | None = None  # (B, D) what the head saw: out-of-distribution scores use it

    def traces(self) -> list[Trace]:
        return build_traces(self.layout, self.selections, self.tokens_per_stage)


def unfit_reason(vit: nn.Module) -> str | None:
    """Why this ViT can't be an AdaViT, in words; None when it can."""
    name = type(vit).__name__
    if getattr(vit, "cls_token", None) is None:
        return f"{name} has no CLS token, and ATS scores tokens by the CLS token's attention"
    if getattr(vit, "global_pool", "token") != "token":
        return f"{name} pools by {vit.global_pool!r}; AdaViT's head reads the CLS token (global_pool='token')"
    if getattr(vit, "pos_embed", None) is None:
        return f"{name} has no absolute position embedding to resample for coarse tokens"
    if getattr(vit, "dynamic_img_size", False) or getattr(vit, "attn_pool", None) is not None:
        return f"{name} uses dynamic image size or attention pooling, which mixed-scale tokens don't support"
    proj = getattr(getattr(vit, "patch_embed", None), "proj", None)
    if not isinstance(proj, nn.Conv2d) or proj.kernel_size != proj.stride:
        return f"{name} has no plain convolutional patch embedding (patch_embed.proj)"
    for i, blk in enumerate(getattr(vit, "blocks", ())):
        attn = getattr(blk, "attn", None)
        if not isinstance(getattr(attn, "qkv", None), nn.Linear) or not hasattr(attn, "head_dim"):
            return f"block {i} has no standard timm Attention (a fused qkv Linear); ATS reads its queries and keys"
    return None


class AdaViT(nn.Module):
    def __init__(self, vit: nn.Module, config: AdaViTConfig):
        super().__init__()
        reason = unfit_reason(vit)
        if reason:
            raise ValueError(f"AdaViT can't run on this backbone: {reason}")
        self.vit = vit
        self.config = config
        self.patch = patch_size(vit)
        self.region = 2 * self.patch
        self.num_prefix = int(vit.num_prefix_tokens)
        bad = [w for w in config.windows if w % self.region]
        if bad:
            raise ValueError(f"each window must be 0 or a multiple of {self.region} px (2x2 patches of "
                             f"{self.patch} px), got {config.windows}")
        split_blocks(vit.blocks, config.stages)  # fail early on a bad stage split
        self.gate = LearnedGate(int(vit.embed_dim)) if config.gate == "learned" else None
        self.scorers = (nn.ModuleList(LearnedScorer(int(vit.embed_dim)) for _ in config.stages[1:])
                        if config.scorer == "learned" else None)

    @classmethod
    def create(cls, config: AdaViTConfig = AdaViTConfig()) -> AdaViT:
        """Random weights at the backbone's native position grid (518 px for DINOv2, 224 for DeiT);
        load a state dict into it. Positions are resampled per input size at run time."""
        vit = timm.create_model(config.model_name, pretrained=False, num_classes=config.num_classes)
        if getattr(vit, "head_dist", None) is not None:  # the new task's head reads CLS; the token stays as context
            vit.head_dist = nn.Identity()
        if config.pool == "cls+mean":
            vit.head = nn.Linear(2 * vit.embed_dim, config.num_classes)
        return cls(vit, config).eval()

    def scorer(self, s: int) -> nn.Module | None:
        """The learned scorer of sampler s, or None for ATS's parameter-free score."""
        return self.scorers[s] if self.scorers is not None else None

    @property
    def stages(self) -> list[list[nn.Module]]:
        return split_blocks(self.vit.blocks, self.config.stages)

    def tokenize(self, images: torch.Tensor, fine_ratio: float) -> tuple[Tokens, Layout]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        x, layout = embed(self.vit, images, fine_ratio, self.gate)
        src = torch.arange(x.shape[1] - self.num_prefix, device=x.device).expand(x.shape[0], -1)
        return Tokens(x, src, None, self.num_prefix), layout

    def run(self, tokens: Tokens, layout: Layout, settings: Settings, start: int = 0) -> StagesOut:
        """Stages `start..3` with their samplers (start=1 resumes from cached stage-1 output)."""
        return run_stages(
            self.stages, tokens, settings.sampling, start=start,
            windows=self.config.block_windows, boxes=layout.boxes, width=layout.size[1], scorers=self.scorers,
        )

    def features(self, tokens: Tokens) -> torch.Tensor:
        """What the head sees: the final-norm CLS token, with the mean of the valid tokens for cls+mean."""
        z = self.vit.norm(tokens.x)
        if self.config.pool == "cls":
            return z[:, 0]
        valid = tokens.valid_mask().to(z.dtype).unsqueeze(-1)
        return torch.cat([z[:, 0], (z[:, self.num_prefix:] * valid).sum(1) / valid.sum(1)], -1)

    def classify(self, tokens: Tokens) -> torch.Tensor:
        return self.vit.head(self.features(tokens))

    def forward(self, images: torch.Tensor, settings: Settings = Settings()) -> Prediction:
        tokens, layout = self.tokenize(images, settings.fine_ratio)
        out = self.run(tokens, layout, settings)
        feats = self.features(out.tokens)
        return Prediction(self.vit.head(feats), torch.stack(out.counts, 1), layout, out.selections, feats)
