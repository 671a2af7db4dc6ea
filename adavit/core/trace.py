"""What the model did to each image, in plain numpy, for overlays, JSON and users mapping tokens back."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .patching import Layout
from .sampler import FUSED, Selection

STAGE_NAMES = ("patching", "ats1", "ats2")


@dataclass(frozen=True)
class StageTrace:
    """The tokens that entered one step (CLS excluded) and what happened to them.

    ids: stage-0 patch-token index, or -2 for a fused token carried in from an earlier sampler.
    boxes: (n, 4) x0, y0, x1, y1 in model-input pixels (NaN for a fused token).
    scales: 1 fine, 2 coarse, 0 fused. scores: the gate's detail score for `patching`,
    ATS significance (sums to 1) for a sampler. kept: leaves this step. fused: was merged
    into this step's fused token.
    """

    name: str
    ids: np.ndarray
    boxes: np.ndarray
    scales: np.ndarray
    scores: np.ndarray
    kept: np.ndarray
    fused: np.ndarray

    @property
    def n_kept(self) -> int:
        return int(self.kept.sum())

    @property
    def has_fused_token(self) -> bool:
        return bool(self.fused.any())


@dataclass(frozen=True)
class Trace:
    """One image: its steps, plus the affine map from model-input pixels to original-image pixels."""

    size: tuple[int, int]  # model input (H, W)
    stages: tuple[StageTrace, ...]
    tokens_per_stage: tuple[int, ...]  # prefix included, tokens that each transformer stage ran on
    offset: tuple[float, float] = (0.0, 0.0)  # original-image x, y of model pixel (0, 0)
    scale: tuple[float, float] = (1.0, 1.0)  # original pixels per model pixel along x, y
    extra: dict = field(default_factory=dict)

    def stage(self, name: str) -> StageTrace:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage {name!r}; have {[s.name for s in self.stages]}")

    def to_image(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes in model-input pixels -> the same boxes in the original image's pixels."""
        ox, oy = self.offset
        sx, sy = self.scale
        return boxes * np.array([sx, sy, sx, sy]) + np.array([ox, oy, ox, oy])

    def to_dict(self) -> dict:
        return {
            "size": list(self.size),
            "offset": list(self.offset),
            "scale": list(self.scale),
            "tokens_per_stage": list(self.tokens_per_stage),
            "stages": [
                {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in s.__dict__.items()}
                for s in self.stages
            ],
        }


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy() if t.is_floating_point() else t.detach().cpu().numpy()


def build_traces(layout: Layout, selections: list[Selection], counts: torch.Tensor) -> list[Trace]:
    """Per-image traces from a batch's layout and sampler selections (all on the CPU as numpy)."""
    boxes, scales, gate = _np(layout.boxes), _np(layout.scales), _np(layout.gate)
    per_sel = [{k: _np(getattr(s, k)) for k in ("src", "valid", "scores", "kept", "fused")} for s in selections]
    counts = _np(counts)
    traces = []
    for b in range(boxes.shape[0]):
        n = boxes.shape[1]
        steps = [StageTrace("patching", np.arange(n), boxes[b], scales[b], gate[b],
                            np.ones(n, bool), np.zeros(n, bool))]
        for name, s in zip(STAGE_NAMES[1:], per_sel):
            v = s["valid"][b]
            ids = s["src"][b][v]
            real = ids >= 0
            box = np.full((len(ids), 4), np.nan, np.float32)
            box[real] = boxes[b][ids[real]]
            scale = np.zeros(len(ids), scales.dtype)
            scale[real] = scales[b][ids[real]]
            steps.append(StageTrace(name, np.where(real, ids, FUSED), box, scale,
                                    s["scores"][b][v], s["kept"][b][v], s["fused"][b][v]))
        traces.append(Trace(layout.size, tuple(steps), tuple(int(c) for c in counts[b])))
    return traces
