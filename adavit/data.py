"""Oxford Flowers-102 (torchvision), class names, and the transforms shared by training, eval and the app."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
NUM_CLASSES = 102
SHIPPED_CARD = REPO / "checkpoints" / "adavit_s14_flowers102.json"
CROP_PCT = 1.0  # eval keeps the whole short side: nothing the user sees is cropped away twice


def default_data_root() -> Path | None:
    """`ADAVIT_DATA` or ../shared/data beside the repo, when it holds Flowers-102."""
    for root in (os.environ.get("ADAVIT_DATA"), SHARED_DATA):
        if root and (Path(root) / "flowers-102" / "imagelabels.mat").exists():
            return Path(root)
    return None


def resolve_data_root(root: str | Path | None, download: bool = False) -> Path:
    """The folder that holds `flowers-102/`, or a ValueError that says how to get one."""
    if root is None:
        found = default_data_root()
        if found is not None:
            return found
        if download:
            cache = Path(os.environ.get("ADAVIT_CACHE", Path.home() / ".cache" / "adavit")) / "data"
            cache.mkdir(parents=True, exist_ok=True)
            return cache
        raise ValueError(
            "no Flowers-102 data found: pass --data-root DIR (the folder holding flowers-102/), "
            f"set ADAVIT_DATA, place it at {SHARED_DATA}, or add --download when online"
        )
    root = Path(root)
    if not (root / "flowers-102" / "imagelabels.mat").exists() and not download:
        raise ValueError(f"{root} has no flowers-102/imagelabels.mat; point --data-root at the folder "
                         "that contains flowers-102/, or add --download when online")
    return root


def flowers(root: str | Path | None, split: str, transform=None, download: bool = False):
    from torchvision.datasets import Flowers102

    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    path = resolve_data_root(root, download)
    try:
        return Flowers102(root=str(path), split=split, transform=transform, download=download)
    except RuntimeError as e:  # torchvision's "Dataset not found or corrupted"
        raise ValueError(f"Flowers-102 {split} split not usable under {path}: {e}") from e


def class_names(root: str | Path | None = None) -> list[str]:
    """Names by 0-based target, from cat_to_name.json (keys are 1-based); numbered names otherwise."""
    path = Path(root) / "flowers-102" / "cat_to_name.json" if root else None
    if path is None or not path.exists():
        # torchvision's download has no names file; the shipped card carries the same list
        shipped = json.loads(SHIPPED_CARD.read_text()).get("class_names") if SHIPPED_CARD.exists() else None
        if shipped and len(shipped) == NUM_CLASSES:
            return list(shipped)
        return [f"class {i + 1}" for i in range(NUM_CLASSES)]
    names = json.loads(path.read_text())
    return [names.get(str(i + 1), f"class {i + 1}") for i in range(NUM_CLASSES)]


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


def stratified_subset(targets: list[int], per_class: int, seed: int = 0) -> list[int]:
    """`per_class` indices of every class, fixed by the seed."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(i)
    picked = [j for c in sorted(by_class) for j in rng.permutation(by_class[c])[:per_class]]
    return sorted(int(j) for j in picked)
