"""One shape for every labelled image set: class names plus (path, label) pairs per split.

`open_data("flowers102")` or `open_data("imagefolder:DIR")` is what `--data` names; training,
evaluation and the sweep read splits through it and never care which kind it was.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset, Subset

from .datasets import class_names, flowers, resolve_data_root, stratified_subset
from .transforms import eval_transform

FLOWERS = "flowers102"  # the default --data
FOLDER = "imagefolder:"


@dataclass(frozen=True)
class LabelledData:
    name: str  # shown to users: "Flowers-102", or the image folder's name
    classes: tuple[str, ...]
    train: tuple[tuple[str, int], ...]
    val: tuple[tuple[str, int], ...]
    split: dict = field(default_factory=dict)  # how val was made; recorded in the model card

    def samples(self, split: str) -> tuple[tuple[str, int], ...]:
        if split not in ("train", "val"):
            raise ValueError(f"split must be train or val for {self.name}, got {split!r}")
        return getattr(self, split)

    def train_keys(self, pairs) -> list[str]:
        """How a card names train images: the path below the train split's common folder (Flowers-102: the
        file name; an image folder: class/file, since file names repeat across classes)."""
        top = os.path.commonpath([p for p, _ in self.train]) if len(self.train) > 1 else ""
        return [Path(os.path.relpath(p, top) if top else Path(p).name).as_posix() for p, _ in pairs]

    def held_out(self, names) -> tuple[tuple[str, int], ...]:
        """The train images a run kept out of training (`train --holdout`; the card's `train_keys`)."""
        names = set(names)
        pairs = tuple(p for p, key in zip(self.train, self.train_keys(self.train)) if key in names)
        if len(pairs) != len(names):
            raise ValueError(f"the card names {len(names)} held-out train images, but {len(pairs)} of them are in "
                             f"{self.name}'s train split here: this is not the data the checkpoint was trained on")
        return pairs

    def card(self, spec: str) -> dict:
        return {"name": self.name, "spec": spec, "num_classes": len(self.classes),
                "train_images": len(self.train), "val_images": len(self.val), "split": self.split}


class Files(Dataset):
    """(path, label) pairs read with PIL as RGB, then `transform` (torchvision's ImageFolder, minus the scan)."""

    def __init__(self, samples, transform=None):
        self.samples, self.transform = list(samples), transform
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        with Image.open(path) as im:
            img = im.convert("RGB")
        return (self.transform(img) if self.transform else img), label


def open_data(spec: str = FLOWERS, data_root: str | Path | None = None, download: bool = False,
              seed: int = 0) -> LabelledData:
    """What `--data` names: `flowers102` (with `--data-root` / `--download`) or `imagefolder:DIR`."""
    if spec == FLOWERS:
        root = resolve_data_root(data_root, download)
        splits = {s: flowers(root, s, download=download) for s in ("train", "val")}
        pairs = {s: tuple(zip(map(str, d._image_files), map(int, d._labels))) for s, d in splits.items()}
        return LabelledData("Flowers-102", tuple(class_names(root)), pairs["train"], pairs["val"],
                            {"val": "official val split"})
    if spec.startswith(FOLDER) and spec[len(FOLDER):]:
        from .image_folder import image_folder  # it builds a LabelledData: imported here, not at the top

        return image_folder(spec[len(FOLDER):], seed=seed)
    raise ValueError(f"--data must be {FLOWERS!r} or 'imagefolder:DIR' (DIR holds train/<class>/ folders), "
                     f"got {spec!r}")


def card_data(card: dict, spec: str | None = None) -> tuple[str, int]:
    """(spec, split seed) of the data a checkpoint was trained on, as its card records them.

    An explicit `spec` wins; the seed is the card's only when the spec is the card's own, so an image
    folder without val/ is re-split exactly as in training (no training image lands in val).
    """
    recorded = card.get("dataset") or {}
    own = recorded.get("spec") or FLOWERS
    spec = spec or own
    seed = int((recorded.get("split") or {}).get("seed", 0)) if spec == own else 0
    return spec, seed


def eval_dataset(root: str | None, split: str, resolution: int, per_class: int | None = None,
                 limit: int | None = None, download: bool = False, spec: str = FLOWERS,
                 seed: int = 0) -> tuple[Dataset, Path]:
    """The split at eval geometry, optionally a stratified `per_class` subset and/or its first `limit`.
    `seed`: an image folder's val split (see `card_data`)."""
    if spec == FLOWERS:
        path = resolve_data_root(root, download)
        ds = flowers(path, split, eval_transform(resolution), download=download)
        labels = ds._labels
        missing = [f for f in ds._image_files if not Path(f).exists()]
        if missing:  # torchvision checks only the .mat files; this copy may lack a split's images
            raise ValueError(f"the {split} split's images are not under {path / 'flowers-102' / 'jpg'} "
                             f"({len(missing)} of {len(ds)} missing, e.g. {Path(missing[0]).name}); "
                             "this copy of Flowers-102 holds only some splits: use --split val, "
                             "or point --data-root at a full copy")
    else:
        ds = Files(open_data(spec, seed=seed).samples(split), eval_transform(resolution))
        path, labels = Path(spec[len(FOLDER):]), ds.targets
    indices = list(range(len(ds)))
    if per_class is not None:
        if per_class < 1:
            raise ValueError(f"--per-class must be at least 1, got {per_class}")
        indices = stratified_subset(labels, per_class)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be at least 1, got {limit}")
        indices = indices[:limit]
    return (ds if len(indices) == len(ds) else Subset(ds, indices)), path
