"""Flowers-102 loading, class names, subsets and the no-data error (data tests skip without ../shared)."""
from __future__ import annotations

from collections import Counter

import pytest

from adavit import data
from adavit.data import datasets

ROOT = data.default_data_root()
needs_data = pytest.mark.skipif(ROOT is None, reason="Flowers-102 not found ($ADAVIT_DATA or ../shared/data)")


@needs_data
def test_class_names_come_from_cat_to_name_json():
    names = data.class_names(ROOT)
    assert len(names) == data.NUM_CLASSES
    assert names[0] == "pink primrose"  # cat_to_name.json is 1-based, targets are 0-based
    assert len(set(names)) == data.NUM_CLASSES


def test_class_names_without_json_come_from_the_shipped_card(tmp_path):
    names = data.class_names(tmp_path)  # e.g. after torchvision's download, which has no names file
    assert len(names) == 102 and names[0] == "pink primrose" and names[-1] == "blackberry lily"


def test_class_names_without_json_or_card_are_numbered(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "SHIPPED_CARD", tmp_path / "none.json")
    names = data.class_names(tmp_path)
    assert names[0] == "class 1" and names[-1] == "class 102"


def test_stratified_subset_takes_per_class_of_every_class():
    targets = [0] * 5 + [1] * 3 + [2] * 4 + [3]
    picked = data.stratified_subset(targets, per_class=2)
    assert Counter(targets[i] for i in picked) == {0: 2, 1: 2, 2: 2, 3: 1}  # class 3 has only one
    assert picked == sorted(set(picked))
    assert picked == data.stratified_subset(targets, per_class=2)  # fixed by the seed


@needs_data
def test_stratified_subset_of_the_train_split():
    ds = data.flowers(ROOT, "train")
    picked = data.stratified_subset(ds._labels, per_class=3)
    counts = Counter(ds._labels[i] for i in picked)
    assert len(counts) == data.NUM_CLASSES and set(counts.values()) == {3}


def test_resolve_data_root_without_data_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.delenv("ADAVIT_DATA", raising=False)
    monkeypatch.setattr(datasets, "SHARED_DATA", tmp_path / "absent")
    assert data.default_data_root() is None
    with pytest.raises(ValueError, match="no Flowers-102 data found: pass --data-root DIR"):
        data.resolve_data_root(None)


def test_resolve_data_root_rejects_a_folder_without_flowers(tmp_path):
    with pytest.raises(ValueError, match="has no flowers-102/imagelabels.mat"):
        data.resolve_data_root(tmp_path)


def test_flowers_rejects_an_unknown_split():
    with pytest.raises(ValueError, match="split must be train, val or test"):
        data.flowers(None, "validation")


@needs_data
@pytest.mark.parametrize("split", ["train", "val"])
def test_flowers_official_splits_hold_1020_images(split):
    ds = data.flowers(ROOT, split, data.eval_transform(224))
    assert len(ds) == 1020
    assert Counter(ds._labels) == {c: 10 for c in range(data.NUM_CLASSES)}
    image, target = ds[0]
    assert tuple(image.shape) == (3, 224, 224) and 0 <= target < data.NUM_CLASSES
