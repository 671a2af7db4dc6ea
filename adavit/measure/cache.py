"""Resume a forward part-way: patching + stage 1 once per (images, fine ratio), then any keep / mode / fuse.

The output of patching and stage 1 depends only on the images and the fine ratio, so the sweep, the
comparison and the app's live accuracy build it once and finish every sampler setting from it; the
stage-2 cache does the same for ATS2 when only keep2 moves.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.config import Settings
from ..core.model import AdaViT, Prediction
from ..core.patching import Layout
from ..core.sampler import Selection, Tokens, reduce
from ..core.stages import run_stage


@dataclass
class Stage1:
    """Patching + stage-1 output of one batch, stopped before ATS1 (everything ATS1 needs)."""

    tokens: Tokens  # after the stage-1 blocks
    scores: torch.Tensor  # (B, N) ATS1 significance
    layout: Layout
    count: torch.Tensor  # (B,) tokens stage 1 ran on, CLS included
    fine_ratio: float


def _where(model: AdaViT, s: int, layout: Layout) -> dict:
    """Stage s's attention windows and the tokens' boxes, as `run_stages` hands them to `run_stage`."""
    start = sum(model.config.stages[:s])
    return {"windows": model.config.block_windows[start:start + model.config.stages[s]],
            "boxes": layout.boxes, "width": layout.size[1]}


def stage1_cache(model: AdaViT, images: torch.Tensor, fine_ratio: float) -> Stage1:
    """Run patching and stage 1 once; `run_from_stage1` then finishes any keep1/keep2/mode/fuse."""
    tokens, layout = model.tokenize(images, fine_ratio)
    out, scores = run_stage(model.stages[0], tokens, score=True, scorer=model.scorer(0), **_where(model, 0, layout))
    return Stage1(out, scores, layout, tokens.counts, float(fine_ratio))


def run_from_stage1(model: AdaViT, cache: Stage1, settings: Settings) -> Prediction:
    """The same Prediction as `model(images, settings)`, resumed from the cache (ATS1, stages 2-3)."""
    if settings.fine_ratio != cache.fine_ratio:
        raise ValueError(f"this stage-1 cache was built at fine_ratio={cache.fine_ratio}, "
                         f"not {settings.fine_ratio}; build one per fine ratio")
    sampling = settings.sampling
    tokens, sel = reduce(cache.tokens, cache.scores, sampling.keep[0], sampling.mode, sampling.fuse)
    out = model.run(tokens, cache.layout, settings, start=1)
    counts = torch.stack([cache.count, *out.counts], 1)
    feats = model.features(out.tokens)
    return Prediction(model.vit.head(feats), counts, cache.layout, [sel, *out.selections], feats)


@dataclass
class Stage2:
    """Stage 2's output for one chunk at one (keep1, mode, fuse), stopped before ATS2."""

    tokens: Tokens
    scores: torch.Tensor  # ATS2 significance
    sel1: Selection
    counts: tuple[torch.Tensor, torch.Tensor]  # tokens entering stages 1 and 2


def stage2_cache(model: AdaViT, s1: Stage1, settings: Settings) -> Stage2:
    """ATS1 + stage 2 from a stage-1 cache."""
    sampling = settings.sampling
    tokens, sel1 = reduce(s1.tokens, s1.scores, sampling.keep[0], sampling.mode, sampling.fuse)
    out, scores = run_stage(model.stages[1], tokens, score=True, scorer=model.scorer(1),
                            **_where(model, 1, s1.layout))
    return Stage2(out, scores, sel1, (s1.count, tokens.counts))


def run_from_stage2(model: AdaViT, s1: Stage1, s2: Stage2, settings: Settings) -> Prediction:
    """The same Prediction as `model(images, settings)`, resumed at ATS2."""
    sampling = settings.sampling
    tokens, sel2 = reduce(s2.tokens, s2.scores, sampling.keep[1], sampling.mode, sampling.fuse)
    out, _ = run_stage(model.stages[2], tokens, score=False, **_where(model, 2, s1.layout))
    counts = torch.stack([*s2.counts, tokens.counts], 1)
    feats = model.features(out)
    return Prediction(model.vit.head(feats), counts, s1.layout, [s2.sel1, sel2], feats)
