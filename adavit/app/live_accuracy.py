"""Val accuracy at the app's current setting: live on a stratified subset, else the card's sweep.

The val data is the checkpoint's own (its card's dataset: Flowers-102, or the image folder it was
trained on, re-split with the recorded seed), so a checkpoint of your own data gets live numbers too.

Live: a fixed stratified subset (1 image per class = 102 images by default) is decoded once per
resolution and its patching + stage-1 output cached once per (resolution, fine ratio) with
`measure.cache.stage1_cache`; a keep or mode change then runs only ATS1 .. head on the cached tokens
(`measure.cache.run_from_stage1`), which is what makes a keep-slider answer fast.
A second cache level holds stage 2's output per (keep1, mode, fuse), so a keep2 change runs only
ATS2 + stage 3 (about a third of the work), local attention windows included.
Without data: the nearest setting of the sweep shipped in the checkpoint's card, labelled so.
"""
from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.config import Settings
from ..core.model import AdaViT, Prediction
from ..data import FLOWERS_SPEC, eval_dataset
from ..measure.cache import Stage2, run_from_stage2, stage1_cache, stage2_cache
from .cost import Costs

PER_CLASS = 1
CHUNK = 34  # images per forward: bounded memory at 448 px, and still batched
SWEEP = "from the shipped sweep"


@dataclass(frozen=True)
class Accuracy:
    top1: float | None  # 0..1; None when nothing can say
    source: str  # "live", "sweep" or "none"
    text: str  # one line for the UI
    n_images: int = 0
    gflops_mean: float | None = None  # mean over the images it was measured on
    latency_ms: float | None = None  # batch-1, sweep only (live accuracy has no latency of its own)
    seconds: float = 0.0  # wall time it took to answer (live)
    settings: dict | None = None  # the setting the number belongs to (the nearest one, for the sweep)

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in ("top1", "source", "text", "n_images", "gflops_mean", "settings")}


def _ci95(p: float, n: int) -> float:
    """Half-width of the Wilson 95% interval, in the same units as p."""
    if n == 0:
        return float("nan")
    z = 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(abs(centre + half - p), abs(p - (centre - half)))


def describe_setting(s: dict) -> str:
    mode = ("top-k" if s["mode"] == "topk" else "sample") + (" + fuse" if s.get("fuse") else "")
    return f"fine {s['fine_ratio']:g}, keep {s['keep1']:g}/{s['keep2']:g}, {mode}, {s.get('resolution', 224)} px"


class LiveAccuracy:
    """Top-1 on a stratified val subset, recomputed from a stage-1 cache; thread-safe."""

    def __init__(self, model: AdaViT, root: str | Path | None, per_class: int = PER_CLASS, chunk: int = CHUNK, *,
                 spec: str = FLOWERS_SPEC, seed: int = 0, dataset: str = "Flowers-102"):
        self.model, self.root, self.per_class, self.chunk = model, Path(root) if root else None, per_class, chunk
        self.spec, self.seed, self.dataset = spec, seed, dataset
        self.costs = Costs(model)
        self._lock = threading.Lock()
        self._images: OrderedDict[int, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._stage1: OrderedDict[tuple[int, float], list] = OrderedDict()
        self._results: dict[Settings, Accuracy] = {}
        self._stage2: OrderedDict[tuple, list[Stage2]] = OrderedDict()

    @property
    def history(self) -> list[Accuracy]:
        """Every setting answered so far (the chart's live points)."""
        return list(self._results.values())

    def _subset(self, res: int) -> tuple[torch.Tensor, torch.Tensor]:
        if res not in self._images:
            ds, _ = eval_dataset(str(self.root) if self.root else None, "val", res, per_class=self.per_class,
                                 spec=self.spec, seed=self.seed)
            items = [ds[i] for i in range(len(ds))]
            self._images.clear()  # one resolution at a time: 102 images at 448 px are 250 MB
            self._images[res] = (torch.stack([x for x, _ in items]), torch.tensor([int(t) for _, t in items]))
        return self._images[res]

    def _caches(self, res: int, fine_ratio: float) -> list:
        key = (res, fine_ratio)
        if key not in self._stage1:
            images, targets = self._subset(res)
            with torch.inference_mode():
                caches = [(stage1_cache(self.model, images[i:i + self.chunk], fine_ratio), targets[i:i + self.chunk])
                          for i in range(0, len(images), self.chunk)]
            self._stage1[key] = caches
            while len(self._stage1) > 2:
                self._stage1.popitem(last=False)
        self._stage1.move_to_end(key)
        return self._stage1[key]

    def _predict(self, settings: Settings) -> list[tuple[Prediction, torch.Tensor]]:
        caches = self._caches(settings.resolution, settings.fine_ratio)
        key = (settings.resolution, settings.fine_ratio, settings.keep1, settings.mode, settings.fuse)
        if key not in self._stage2:
            self._stage2[key] = [stage2_cache(self.model, c, settings) for c, _ in caches]
            while len(self._stage2) > 4:
                self._stage2.popitem(last=False)
        self._stage2.move_to_end(key)
        return [(run_from_stage2(self.model, c, s2, settings), t)
                for (c, t), s2 in zip(caches, self._stage2[key], strict=True)]

    def __call__(self, settings: Settings) -> Accuracy:
        with self._lock:
            if settings in self._results:
                return self._results[settings]
            t = time.perf_counter()
            correct, n, gflops = 0, 0, []
            with torch.inference_mode():
                for pred, targets in self._predict(settings):
                    correct += int((pred.logits.argmax(-1) == targets).sum())
                    n += len(targets)
                    gflops.append(self.costs.gflops_batch(pred))
            seconds = time.perf_counter() - t
            top1 = correct / n
            per = f"{self.per_class} image{'s' if self.per_class > 1 else ''} per class"
            text = (f"{100 * top1:.1f}% top-1 (±{100 * _ci95(top1, n):.1f}) on {n} {self.dataset} val images "
                    f"({per}, stratified subset), computed live in {seconds:.2f} s")
            acc = Accuracy(top1, "live", text, n, float(np.concatenate(gflops).mean()), None, seconds,
                           settings.to_dict())
            self._results[settings] = acc
            return acc


class SweepLookup:
    """The checkpoint card's sweep: the nearest measured setting (exact when it was swept)."""

    def __init__(self, points: list[dict] | None):
        self.points = [p for p in (points or []) if p.get("top1") is not None]

    def __bool__(self) -> bool:
        return bool(self.points)

    @staticmethod
    def distance(p: dict, s: Settings) -> float:
        d = abs(p["fine_ratio"] - s.fine_ratio) + abs(p["keep1"] - s.keep1) + abs(p["keep2"] - s.keep2)
        d += 1.0 * (p.get("mode", "topk") != s.mode) + 0.5 * (bool(p.get("fuse")) != s.fuse)
        return d + abs(p.get("resolution", 224) - s.resolution) / 28.0

    def __call__(self, settings: Settings) -> Accuracy:
        if not self.points:
            return Accuracy(None, "none",
                            "no accuracy available: the checkpoint's val data is not here and its card has no sweep")
        p = min(self.points, key=lambda q: self.distance(q, settings))
        exact = self.distance(p, settings) < 1e-9
        n = p.get("n_images")
        where = f" on {n} val images" if n else ""
        which = "this setting" if exact else f"nearest swept setting: {describe_setting(p)}"
        text = f"{100 * p['top1']:.1f}% top-1{where}, {SWEEP} ({which})"
        return Accuracy(p["top1"], "sweep", text, n or 0, p.get("gflops_mean"), p.get("latency_ms_b1"), 0.0,
                        {k: p.get(k) for k in ("fine_ratio", "keep1", "keep2", "mode", "fuse", "resolution")})
