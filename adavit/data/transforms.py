"""The transforms shared by training, evaluation and the app (timm's), and the app's eval geometry."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

CROP_PCT = 1.0  # eval keeps the whole short side: nothing the user sees is cropped away twice


def train_transform(resolution: int = 224):
    return create_transform(
        # milder than ImageNet's (0.08, 1) crops: ten images per class, and small flowers must stay in view
        input_size=resolution, is_training=True, auto_augment="rand-m7-mstd0.5-inc1", scale=(0.25, 1.0),
        interpolation="bicubic", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, re_prob=0.0,
    )


def eval_transform(resolution: int = 224):
    return create_transform(
        input_size=resolution, is_training=False, interpolation="bicubic", crop_pct=CROP_PCT,
        mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
    )


@dataclass(frozen=True)
class Prepared:
    """A model-ready tensor and where its pixels lie in the original image."""

    tensor: torch.Tensor  # (1, 3, R, R)
    offset: tuple[float, float]  # original x, y of the crop's top-left corner
    scale: tuple[float, float]  # original pixels per model pixel
    crop: Image.Image  # the RGB crop at the original image's resolution (for crisp overlays)


def prepare(image: Image.Image, resolution: int = 224) -> Prepared:
    """Eval geometry (short side to R, centre crop R x R), with the map back to the original image."""
    image = image.convert("RGB")
    w, h = image.size
    side = min(w, h) * CROP_PCT
    x0, y0 = (w - side) / 2, (h - side) / 2
    box = (round(x0), round(y0), round(x0 + side), round(y0 + side))
    crop = image.crop(box)
    small = crop.resize((resolution, resolution), Image.Resampling.BICUBIC)
    arr = (np.asarray(small, np.float32) / 255.0 - IMAGENET_DEFAULT_MEAN) / IMAGENET_DEFAULT_STD
    tensor = torch.from_numpy(arr.transpose(2, 0, 1).astype(np.float32)).unsqueeze(0)
    s = (box[2] - box[0]) / resolution
    return Prepared(tensor, (float(box[0]), float(box[1])), (s, (box[3] - box[1]) / resolution), crop)
