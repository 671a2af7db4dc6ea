"""Does an exported graph compute what the PyTorch model computes? Logits, tokens and kept indices, compared."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.config import Settings
from ..core.model import AdaViT
from .graph import Exportable
from .runtime import OrtModel

LOGIT_TOLERANCE = 1e-4  # fp32; an int8 graph is compared too, but only reported


@dataclass(frozen=True)
class Agreement:
    images: int
    max_logit_diff: float
    same_tokens: bool  # tokens per stage, every image
    same_kept: bool  # boxes and the kept indices of both samplers, every image
    same_top1: float  # share of images whose predicted class agrees

    @property
    def exact(self) -> bool:
        return self.max_logit_diff <= LOGIT_TOLERANCE and self.same_tokens and self.same_kept

    def describe(self) -> str:
        mark = {True: "same", False: "DIFFERENT"}
        return (f"{self.images} images: max |logit diff| {self.max_logit_diff:.2e} (tolerance {LOGIT_TOLERANCE:g}), "
                f"tokens per stage {mark[self.same_tokens]}, kept indices {mark[self.same_kept]}, "
                f"top-1 agrees on {100 * self.same_top1:.1f}%")


def fixed_images(resolution: int, n: int = 32) -> tuple[torch.Tensor, str]:
    """n Flowers-102 val images (one per class, fixed) when the data is there, else a fixed random batch."""
    from .. import data

    root = data.default_data_root()
    if root is not None:
        ds = data.flowers(root, "val", data.eval_transform(resolution))
        idx = data.stratified_subset(list(ds._labels), 1)[:n]
        return torch.stack([ds[i][0] for i in idx]), f"Flowers-102 val, {n} images (one per class)"
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, resolution, resolution, generator=g), f"random tensor (seed 0), {n} images"


def compare(model: AdaViT, settings: Settings, ort_model: OrtModel, images: torch.Tensor,
            batch: int = 8) -> Agreement:
    """Both runtimes on the same images, `batch` at a time (so the dynamic batch axis is exercised too)."""
    wrapper = Exportable(model, settings).eval()
    diff, same_tokens, same_kept, agree = 0.0, True, True, 0
    with torch.inference_mode():
        for x in images.split(batch):
            ref = wrapper(x)
            got = ort_model(x)
            diff = max(diff, float((got.logits - ref[0]).abs().max()))
            same_tokens &= torch.equal(got.tokens_per_stage, ref[1])
            same_kept &= torch.equal(got.boxes, ref[2]) and all(
                a.shape == b.shape and torch.equal(a, b) for a, b in zip(got.kept, ref[3:], strict=True))
            agree += int((got.logits.argmax(1) == ref[0].argmax(1)).sum())
    return Agreement(len(images), diff, same_tokens, same_kept, agree / len(images))
