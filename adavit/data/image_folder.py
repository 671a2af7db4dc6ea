"""Your own images: `DIR/train/<class>/*.jpg` (+ optional `DIR/val/<class>/...`), as torchvision's ImageFolder.

Every file is opened once when the folder is scanned (header only, no full decode), so a file that
is not an image is skipped and counted there, never met mid-epoch. Without `val/`, a stratified,
seeded share of `train/` becomes the val split, and `LabelledData.split` records how, for the card.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes

from .labelled import LabelledData

VAL_FRACTION = 0.2


def _readable(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.verify()  # reads the header and checks the structure; no pixels decoded
        return True
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return False


def scan(folder: Path, classes: list[str] | None = None) -> tuple[list[tuple[str, int]], list[str], int]:
    """(path, label) pairs of every readable image under `folder/<class>/`, the classes, and how many files
    were skipped as unreadable. `classes` pins the label order (val must use train's)."""
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    found, _ = find_classes(str(folder)) if any(p.is_dir() for p in folder.iterdir()) else ([], {})
    classes = list(classes or found)
    if extra := sorted(set(found) - set(classes)):
        raise ValueError(f"{folder} has classes that train/ lacks: {', '.join(extra)}")
    samples, skipped = [], 0
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).rglob("*") if p.is_file()) if (folder / name).is_dir() else []
        for path in files:
            if path.suffix.lower() in IMG_EXTENSIONS and _readable(path):
                samples.append((str(path), label))
            else:
                skipped += 1
    return samples, classes, skipped


def stratified_split(labels: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, val): `fraction` of every class (at least 1, at most all but 1) goes to val."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    val = []
    for members in by_class.values():
        k = min(max(1, round(fraction * len(members))), len(members) - 1)
        val += [int(j) for j in rng.permutation(members)[:k]]
    val_set = set(val)
    return [i for i in range(len(labels)) if i not in val_set], sorted(val)


def image_folder(root: str | Path, val_fraction: float = VAL_FRACTION, seed: int = 0) -> LabelledData:
    root = Path(root).expanduser()
    if not (root / "train").is_dir():
        raise ValueError(f"{root} has no train/ folder: an image folder holds train/<class>/*.jpg "
                         "(and optionally val/<class>/*.jpg), one folder per class")
    train, classes, skipped = scan(root / "train")
    counts = Counter(label for _, label in train)
    if empty := [c for i, c in enumerate(classes) if counts[i] == 0]:
        raise ValueError(f"{root / 'train'}: no readable image in class folder(s) {', '.join(empty)}; "
                         "remove them or add images")
    if len(classes) < 2:
        raise ValueError(f"{root / 'train'} has {len(classes)} class folder(s); a classifier needs at least 2")
    if (root / "val").is_dir():
        val, _, skipped_val = scan(root / "val", classes)
        split = {"val": "val/ folder", "skipped_unreadable": {"train": skipped, "val": skipped_val}}
    else:
        if min(counts.values()) < 2:
            raise ValueError(f"{root} has no val/ folder, and a class with a single image can't be split; "
                             "add a val/ folder or more images")
        tr, va = stratified_split([label for _, label in train], val_fraction, seed)
        train, val = [train[i] for i in tr], [train[i] for i in va]
        split = {"val": f"stratified {val_fraction:.0%} of train/ per class", "seed": seed,
                 "val_files": [str(Path(p).relative_to(root)) for p, _ in val],
                 "skipped_unreadable": {"train": skipped}}
    if skipped or split["skipped_unreadable"].get("val"):
        print(f"{root}: skipped {sum(split['skipped_unreadable'].values())} file(s) that are not readable images")
    return LabelledData(root.name, tuple(classes), tuple(train), tuple(val), split)
