"""Oxford Flowers-102 (torchvision): where the data is, its splits, class names and stratified subsets."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
NUM_CLASSES = 102
SHIPPED_CARD = REPO / "checkpoints" / "adavit_s14_flowers102.json"


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


def stratified_subset(targets: list[int], per_class: int, seed: int = 0, fold: int = 0) -> list[int]:
    """`per_class` indices of every class, fixed by the seed. Folds 0, 1, ... of one seed are disjoint: fold k
    takes the k-th run of `per_class` in each class's permutation."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(i)
    start = fold * per_class
    picked = [j for c in sorted(by_class) for j in rng.permutation(by_class[c])[start:start + per_class]]
    return sorted(int(j) for j in picked)
