"""One image through AdaViT for the app: cached so that a slider only redoes what it changes.

Per uploaded image (keyed by its file, so the UI and the /analyze API share it):
  loaded image + display base          once per upload
  prepared tensor                      once per resolution
  patching + stage 1 (measure.cache.stage1_cache)  once per (resolution, fine ratio)
  ATS1 .. head (measure.cache.run_from_stage1)     on every keep/mode change: the only model work then
Results are cached per settings too, so a layer toggle or a repeated request costs no model time.
"""
from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..core.config import PATCH, Settings, check_side
from ..core.model import AdaViT
from ..core.trace import Trace
from ..data import Prepared, prepare
from ..data.upload import Loaded, load_image
from ..measure.cache import Stage1, run_from_stage1, stage1_cache
from ..measure.mahalanobis import OODScore, OODStats
from . import overlay
from .cost import Costs

MODE_CHOICES = ("top-k", "sample", "top-k + fuse", "sample + fuse")
REFERENCE_SIDE = 224  # compare's budgets and the README's targets are shares of the full-token forward here
STAGE1_RUNS = 2  # patching + stage 1 timed twice per (image, fine ratio); the faster run is shown


def parse_mode(mode: str) -> tuple[str, bool]:
    """'top-k', 'sample', 'top-k + fuse', 'sample + fuse' (also 'topk', 'topk+fuse', ...) -> (mode, fuse)."""
    text = str(mode).lower().replace(" ", "").replace("-", "")
    fuse = text.endswith("+fuse")
    base = text.removesuffix("+fuse")
    if base not in ("topk", "sample"):
        raise ValueError(f"mode must be one of {', '.join(MODE_CHOICES)}; got {mode!r}")
    return base, fuse


def resolutions(patch: int = PATCH) -> tuple[int, ...]:
    """The resolution slider's stops: whole 2x2-patch regions from 224 to 448 px (or the nearest above 224)."""
    region = 2 * patch
    return tuple(range(-(-224 // region) * region, 449, region))


def make_settings(fine_ratio: float, keep1: float, keep2: float, mode: str, resolution: int = 224,
                  patch: int = PATCH) -> Settings:
    """Settings from the UI's values, the side checked against the model's patch (regions of 2x2)."""
    base, fuse = parse_mode(mode)
    settings = Settings(float(fine_ratio), float(keep1), float(keep2), base, fuse, int(resolution))
    check_side(settings.resolution, "resolution", patch)
    return settings


def mode_label(settings: Settings) -> str:
    return ("top-k" if settings.mode == "topk" else "sample") + (" + fuse" if settings.fuse else "")


@dataclass
class ImageEntry:
    """Everything derived from one upload that no slider changes, plus the per-setting caches."""

    loaded: Loaded
    base: np.ndarray  # display image (the analysed crop, 512..1024 px)
    prepared: dict[int, Prepared] = field(default_factory=dict)
    stage1: OrderedDict = field(default_factory=OrderedDict)  # (res, fine) -> (Stage1, ms)
    results: OrderedDict = field(default_factory=OrderedDict)  # Settings -> Analysis


@dataclass(frozen=True)
class Analysis:
    settings: Settings
    trace: Trace  # offset/scale map its boxes into the uploaded image's pixels
    probs: np.ndarray  # (C,)
    top5: list[tuple[str, float]]
    gflops: float
    gflops_full: float
    stage1_ms: float  # patching + stage 1, measured when this image's stage-1 cache was built
    rest_ms: float  # ATS1 .. head, measured for this result
    latency_ms_full: float  # median full-token forward at this resolution, this process
    notes: tuple[str, ...] = ()
    cached: bool = False  # True when the model did not run for this call
    ood: OODScore | None = None  # distance to the training classes; None when the model has no statistics
    tokens_full: int = 0  # tokens of the plain ViT on the same input, prefix included
    # full-token (latency ms, GFLOPs) at the reference side (224 px, which every README target names), when
    # the setting runs at another side; None at 224
    reference: tuple[float, float] | None = None

    @property
    def tokens_per_stage(self) -> tuple[int, ...]:
        return self.trace.tokens_per_stage

    @property
    def latency_ms(self) -> float:
        return self.stage1_ms + self.rest_ms

    @property
    def max_prob(self) -> float:
        return float(self.probs.max())

    @property
    def entropy_share(self) -> float:
        p = self.probs.astype(np.float64).clip(1e-12)
        return float(-(p * np.log(p)).sum() / np.log(len(p)))

    def to_json(self) -> dict:
        return {
            "top5": [{"label": n, "probability": round(p, 6)} for n, p in self.top5],
            "tokens_per_stage": list(self.tokens_per_stage),
            "gflops": round(self.gflops, 4),
            "gflops_full": round(self.gflops_full, 4),
            "latency_ms": round(self.latency_ms, 2),
            "latency_ms_full": round(self.latency_ms_full, 2),
            **({f"gflops_full_{REFERENCE_SIDE}": round(self.reference[1], 4),
                f"latency_ms_full_{REFERENCE_SIDE}": round(self.reference[0], 2)} if self.reference else {}),
            "ood": self.ood.to_json() if self.ood is not None else None,
            "settings": self.settings.to_dict(),
            "notes": list(self.notes),
        }


def _source_key(source: str | Path | bytes | Image.Image) -> str:
    """Gradio stores each upload under a content-hash folder, so path + size + mtime is a content key."""
    if isinstance(source, (str, Path)):
        p = Path(source)
        try:
            st = p.stat()
        except OSError:
            return f"missing:{p}"
        return f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    data = source.tobytes() if isinstance(source, Image.Image) else bytes(source)
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _lru_put(cache: OrderedDict, key, value, size: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > size:
        cache.popitem(last=False)


class Analyzer:
    """The app's model runner; one per loaded model, shared by every session (thread-safe)."""

    def __init__(self, model: AdaViT, class_names: list[str] | tuple[str, ...], max_images: int = 16,
                 ood: OODStats | None = None):
        if len(class_names) != model.config.num_classes:
            raise ValueError(f"{len(class_names)} class names for a {model.config.num_classes}-class model")
        self.model = model.eval()
        self.patch = int(getattr(model, "patch", PATCH))
        self.class_names = tuple(class_names)
        self.costs = Costs(model)
        self.max_images = max_images
        self.ood = ood if ood is not None and ood.num_classes == model.config.num_classes else None
        # the setting the threshold was calibrated at: the verdict belongs to the photo, not to the sliders
        # (at keep 0.25 / 0.25 the features move so far that only 55% of val flowers would pass)
        calibrated = (self.ood.info.get("settings") if self.ood is not None else None) or None
        self.ood_settings = Settings(**calibrated) if calibrated else None
        self._images: OrderedDict[str, ImageEntry] = OrderedDict()
        self._lock = threading.RLock()  # one forward at a time: two would only share the same cores

    def image(self, source: str | Path | bytes | Image.Image) -> ImageEntry:
        """Load (or fetch from the cache) an upload; ImageError for anything unusable."""
        key = _source_key(source)
        with self._lock:
            if key in self._images:
                self._images.move_to_end(key)
                return self._images[key]
        loaded = load_image(source)  # outside the lock: decoding a big photo must not stall others
        prep = prepare(loaded.image, 224)  # the crop is the same at every resolution
        entry = ImageEntry(loaded, overlay.display_base(prep.crop), {224: prep})
        with self._lock:
            _lru_put(self._images, key, entry, self.max_images)
        return entry

    def _prepared(self, entry: ImageEntry, res: int) -> Prepared:
        if res not in entry.prepared:
            entry.prepared[res] = prepare(entry.loaded.image, res)
        return entry.prepared[res]

    def _input(self, prep: Prepared) -> torch.Tensor:
        return prep.tensor.to(next(self.model.parameters()).device)  # CUDA on a GPU Space

    def _stage1(self, entry: ImageEntry, prep: Prepared, settings: Settings) -> tuple[Stage1, float]:
        key = (settings.resolution, settings.fine_ratio)
        if key not in entry.stage1:
            times = []
            for _ in range(STAGE1_RUNS):  # a first run at a new token count pays one-off start-up costs
                t = time.perf_counter()
                cache = stage1_cache(self.model, self._input(prep), settings.fine_ratio)
                times.append(1000 * (time.perf_counter() - t))
            _lru_put(entry.stage1, key, (cache, min(times)), 4)
        entry.stage1.move_to_end(key)
        return entry.stage1[key]

    def analyze(self, source: str | Path | bytes | Image.Image, settings: Settings) -> Analysis:
        entry = self.image(source)
        with self._lock, torch.inference_mode():
            if settings in entry.results:
                return replace(entry.results[settings], cached=True)
            prep = self._prepared(entry, settings.resolution)
            s1, s1_ms = self._stage1(entry, prep, settings)
            t = time.perf_counter()
            pred = run_from_stage1(self.model, s1, settings)
            rest_ms = 1000 * (time.perf_counter() - t)
            probs = pred.logits[0].float().softmax(-1).cpu().numpy()
            ood = None
            if self.ood is not None and pred.features is not None:
                at = self.ood_settings
                ood = (self.ood.verdicts(pred.features)[0] if at is None or at == settings
                       else self.analyze(source, at).ood)  # one forward more per photo, then cached
            gflops = self.costs.gflops(pred)
            full_ms, full_gflops = self.costs.full(self._input(prep))
            reference = None
            if settings.resolution != REFERENCE_SIDE and REFERENCE_SIDE % (2 * self.patch) == 0:
                reference = self.costs.full(self._input(self._prepared(entry, REFERENCE_SIDE)))
        trace = pred.traces()[0]
        h, w = trace.size  # the model's input: the crop resized (a timm ViT may round it to its patch)
        crop_w, crop_h = prep.crop.size
        trace = replace(trace, offset=prep.offset, scale=(crop_w / w, crop_h / h))
        order = np.argsort(-probs, kind="stable")[:5]
        result = Analysis(
            settings, trace, probs, [(self.class_names[i], float(probs[i])) for i in order],
            gflops, full_gflops, s1_ms, rest_ms, full_ms, entry.loaded.notes, ood=ood,
            tokens_full=(h // self.patch) * (w // self.patch) + getattr(self.model, "num_prefix", 1),
            reference=reference,
        )
        with self._lock:
            _lru_put(entry.results, settings, result, 64)
        return result

    def views(self, source, result: Analysis, layers: overlay.Layers) -> list[np.ndarray]:
        """The three per-stage overlays of `result` on the upload's display image."""
        return overlay.render_all(self.image(source).base, result.trace, layers)
