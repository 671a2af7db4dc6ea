"""Where the app's model runs: CUDA when the machine has it, ZeroGPU's `@spaces.GPU` when `spaces` is installed.

On a ZeroGPU Space the `spaces` package is preinstalled: the handlers that run the model are wrapped
with `spaces.GPU`, which attaches a GPU for the duration of each call. Everywhere else `on_gpu` is the
identity, so local runs, tests and CPU Spaces never import it.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch


def device() -> str:
    """'cuda' on a GPU Space (ZeroGPU included: `spaces` makes CUDA look available at start-up), else 'cpu'."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def on_gpu(fn: Callable) -> Callable:
    """`spaces.GPU(fn)` when the `spaces` package is importable, else `fn` unchanged."""
    if importlib.util.find_spec("spaces") is None:
        return fn
    import spaces

    return spaces.GPU(fn)
