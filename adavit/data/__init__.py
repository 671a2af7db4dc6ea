"""Data: Flowers-102 (where it is, splits, class names, stratified subsets), your own image folders,
timm's transforms with the eval geometry, and upload decoding (any photo in, RGB or a clear error out).

May import: core.
"""
from .datasets import (
    NUM_CLASSES,
    class_names,
    default_data_root,
    flowers,
    resolve_data_root,
    stratified_subset,
)
from .labelled import FLOWERS as FLOWERS_SPEC
from .labelled import FOLDER as FOLDER_SPEC
from .labelled import Files, LabelledData, card_data, eval_dataset, open_data
from .transforms import Prepared, eval_transform, prepare, train_transform
from .upload import ImageError, Loaded, load_image

__all__ = [
    "FLOWERS_SPEC", "FOLDER_SPEC", "Files", "ImageError", "LabelledData", "Loaded", "NUM_CLASSES", "Prepared",
    "class_names", "card_data", "default_data_root", "eval_dataset", "eval_transform", "flowers", "load_image",
    "open_data", "prepare", "resolve_data_root", "stratified_subset", "train_transform",
]
