"""Data: Flowers-102 (where it is, splits, class names, stratified subsets), timm's transforms with
the eval geometry, and upload decoding (any photo in, RGB or a clear error out).

May import: core.
"""
from .datasets import (
    NUM_CLASSES,
    class_names,
    default_data_root,
    eval_dataset,
    flowers,
    resolve_data_root,
    stratified_subset,
)
from .transforms import Prepared, eval_transform, prepare, train_transform
from .upload import ImageError, Loaded, load_image

__all__ = [
    "NUM_CLASSES", "ImageError", "Loaded", "Prepared", "class_names", "default_data_root", "eval_dataset",
    "eval_transform", "flowers", "load_image", "prepare", "resolve_data_root", "stratified_subset",
    "train_transform",
]
