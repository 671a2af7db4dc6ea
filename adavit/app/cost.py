"""What one image costs in the app: GFLOPs (adavit.measure.flops) and latency measured in this process.

GFLOPs come from `adavit.measure.flops.image_gflops`, the project's closed form that equals torch's counter
on the same batch-1 forward (tests/test_flops.py). Full-token latency is measured once per input
size (median of a few runs) and cached: it does not depend on the image's content.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import torch

from ..core.config import Settings
from ..core.model import Prediction
from ..measure import flops

FULL_RUNS = 3  # median of 3 after one warm-up: ~0.2 s at 224, ~1.5 s at 448 on 2 cores, once per size


def flop_convention() -> str:
    """How the numbers count, for the UI."""
    return flops.CONVENTION


class Costs:
    """GFLOPs and full-token latency for one model; safe to share between threads."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self._lock = threading.Lock()
        self._full: dict[tuple[int, int], tuple[float, float]] = {}

    def gflops(self, pred: Prediction) -> float:
        """GFLOPs of the first image of `pred`, as if it ran alone."""
        return float(self.gflops_batch(pred)[0])

    def gflops_batch(self, pred: Prediction) -> np.ndarray:
        """(B,) GFLOPs of each image of a batch (each at its own token counts, no padding)."""
        return np.asarray(flops.image_gflops(self.model, pred), dtype=np.float64).reshape(-1)

    def full(self, images: torch.Tensor) -> tuple[float, float]:
        """(median latency ms, GFLOPs) of the full-token forward at this input size."""
        key = tuple(int(s) for s in images.shape[-2:])
        with self._lock:
            if key not in self._full:
                settings = Settings.full(key[1])
                with torch.inference_mode():
                    pred = self.model(images, settings)  # warm-up, and the prediction to count
                    times = []
                    for _ in range(FULL_RUNS):
                        t = time.perf_counter()
                        self.model(images, settings)
                        times.append(1000 * (time.perf_counter() - t))
                self._full[key] = (float(np.median(times)), self.gflops(pred))
            return self._full[key]
