"""AdaViT itself as a strategy: mixed-scale patching, then ATS1 / ATS2 in any mode (top-k, sample, fuse)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import DEFAULT_SETTINGS, Settings
from .base import Outcome, from_stages


@dataclass(frozen=True)
class AdaViTStrategy:
    settings: Settings = DEFAULT_SETTINGS
    name = "adavit"

    @property
    def adaptive(self) -> bool:
        """Sample mode keeps a different number of tokens per image."""
        return self.settings.mode == "sample"

    def forward(self, model, images: torch.Tensor) -> Outcome:
        tokens, layout = model.tokenize(images, self.settings.fine_ratio)
        out = model.run(tokens, layout, self.settings)
        return from_stages(model, out, layout, model.config.stages, learned_scores=model.scorers is not None)
