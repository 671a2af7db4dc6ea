"""Per-stage views of a Trace drawn on the image itself (numpy + OpenCV): grid, scores, dropped tokens.

Three views, one per step of the trace:
  patching  every token: fine (thin white) and coarse (thick blue) boxes; heat = the gate's detail score
  ats1      heat = ATS1 significance of the tokens stage 1 produced; tokens ATS1 dropped shaded orange,
            the ones it merged into its fused token dotted; boxes = the tokens stage 2 runs on
  ats2      the same for ATS2 (magenta); ATS1's drops stay shaded orange; boxes = stage 3's tokens

Fills are built on the fine-patch cell grid (R/14 cells a side, at most 32x32) and upscaled with
nearest-neighbour, so colour edges line up with the boxes; only the lines are drawn at display
resolution. Everything is drawn on the centre crop at (about) its own resolution, so lines stay crisp.
"""
from __future__ import annotations

import itertools
import os
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..core.config import PATCH
from ..core.trace import STAGE_NAMES, StageTrace, Trace

MAX_SIDE = 1024  # longer display side: crisp on screens, and fast to draw and encode
MIN_SIDE = 512  # small crops are enlarged so that 1 px lines stay thin next to 14 px patches

FINE = (255, 255, 255)  # RGB
COARSE = (40, 170, 255)
DROPPED = {"ats1": (255, 120, 0), "ats2": (230, 0, 200)}  # each sampler's colour
FUSED_DOT = (255, 255, 255)
HEAT_MAP = cv2.COLORMAP_VIRIDIS  # dark purple (low) -> yellow (high); neither orange nor magenta
HEAT_ALPHA = 0.5
DROP_ALPHA = 0.5
TITLES = {"patching": "Patching (stage 1 input)", "ats1": "After ATS1 (stage 2 input)",
          "ats2": "After ATS2 (stage 3 input)"}


@dataclass(frozen=True)
class Layers:
    grid: bool = True
    heatmap: bool = True
    dropped: bool = True

    @classmethod
    def from_names(cls, names: list[str] | tuple[str, ...] | None) -> Layers:
        names = {n.lower() for n in (names or ())}
        return cls(grid="grid" in names, heatmap="heatmap" in names, dropped="dropped" in names)


def display_base(crop: Image.Image, max_side: int = MAX_SIDE, min_side: int = MIN_SIDE) -> np.ndarray:
    """The crop as an RGB uint8 array with its side in [min_side, max_side] (area-down, cubic-up)."""
    a = np.asarray(crop.convert("RGB"))
    side = max(a.shape[:2])
    target = min(max(side, min_side), max_side)
    if target == side:
        return np.ascontiguousarray(a)
    interp = cv2.INTER_AREA if target < side else cv2.INTER_CUBIC
    h, w = a.shape[:2]
    return cv2.resize(a, (round(w * target / side), round(h * target / side)), interpolation=interp)


def cell_size(trace: Trace) -> int:
    """Side of the smallest token in model pixels: 14 for AdaViT's fine patches (28 when none is
    fine), the patch size for a plain timm ViT. Fills are painted on a grid of such cells."""
    b = trace.stage("patching").boxes
    w = b[:, 2] - b[:, 0]
    w = w[np.isfinite(w)]
    return int(w.min()) if len(w) else PATCH


def _cells(boxes: np.ndarray, cell: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cell index ranges (x0, y0, x1, y1) of boxes in model pixels (NaN boxes -> empty)."""
    b = np.rint(np.nan_to_num(boxes, nan=0.0) / cell).astype(np.int64)
    return b[:, 0], b[:, 1], b[:, 2], b[:, 3]


def _paint(grid: np.ndarray, boxes: np.ndarray, values: np.ndarray, cell: int) -> None:
    """grid[cells of box i] = values[i] (a coarse box covers 2x2 fine cells)."""
    x0, y0, x1, y1 = _cells(boxes, cell)
    for i in range(len(values)):
        grid[y0[i]:y1[i], x0[i]:x1[i]] = values[i]


def _density(step: StageTrace) -> np.ndarray:
    """Score per unit area: a coarse token's score spread over its 4 fine cells, so areas compare fairly."""
    area = np.maximum((step.boxes[:, 2] - step.boxes[:, 0]) * (step.boxes[:, 3] - step.boxes[:, 1]), 1.0)
    return np.nan_to_num(step.scores.astype(np.float64) / area)


def _heat_cells(step: StageTrace, gh: int, gw: int, cell: int) -> tuple[np.ndarray, np.ndarray]:
    """(gh, gw, 3) colour-mapped scores and a (gh, gw) mask of the cells they cover."""
    real = step.ids >= 0
    v = _density(step)[real]
    if not len(v) or np.ptp(v) == 0:  # no score to show (a plain ViT has no patching gate)
        return np.zeros((gh, gw, 3), np.uint8), np.zeros((gh, gw), bool)
    top = np.quantile(v, 0.98)
    v = np.sqrt(np.clip(v / (top or 1.0), 0.0, 1.0))  # sqrt: the low tail stays visible
    grid = np.zeros((gh, gw), np.float32)
    cover = np.zeros((gh, gw), bool)
    _paint(grid, step.boxes[real], v, cell)
    _paint(cover, step.boxes[real], np.ones(len(v), bool), cell)
    colours = cv2.applyColorMap(np.rint(grid * 255).astype(np.uint8), HEAT_MAP)[..., ::-1]  # BGR -> RGB
    return colours, cover


def _dropped_cells(trace: Trace, upto: str, gh: int, gw: int, cell: int) -> tuple[np.ndarray, np.ndarray]:
    """(gh, gw, 3) colours of the sampler that dropped each cell's token (up to `upto`), and a mask."""
    colours = np.zeros((gh, gw, 3), np.uint8)
    mask = np.zeros((gh, gw), bool)
    for name in STAGE_NAMES[1 : STAGE_NAMES.index(upto) + 1]:
        step = trace.stage(name)
        gone = ~step.kept & (step.ids >= 0)
        _paint(colours, step.boxes[gone], np.tile(np.array(DROPPED[name], np.uint8), (int(gone.sum()), 1)), cell)
        _paint(mask, step.boxes[gone], np.ones(int(gone.sum()), bool), cell)
    return colours, mask


def _blend(img: np.ndarray, colours: np.ndarray, mask: np.ndarray, alpha: float) -> None:
    """img = img * (1 - alpha) + colours * alpha where mask (all at display size), in place."""
    if not mask.any():
        return
    mixed = cv2.addWeighted(img, 1.0 - alpha, colours, alpha, 0.0)  # SIMD: ~1 ms per megapixel
    cv2.copyTo(mixed, mask.astype(np.uint8), img)


def _grey_out(img: np.ndarray, colours: np.ndarray, mask: np.ndarray, alpha: float) -> None:
    """Dropped tokens: the photo turned dark grey, then tinted with the sampler's colour, in place.

    Greying first keeps a drop readable on any photo, even an orange flower under orange shading.
    """
    if not mask.any():
        return
    grey = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    mixed = cv2.addWeighted(grey, (1.0 - alpha) * 0.6, colours, alpha, 0.0)
    cv2.copyTo(mixed, mask, img)


def _up(cells: np.ndarray, h: int, w: int) -> np.ndarray:
    return cv2.resize(cells.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)


def _to_display(trace: Trace, boxes: np.ndarray, h: int, w: int) -> np.ndarray:
    """Model-pixel boxes -> display pixels (the display image is the crop that the model saw, resized)."""
    mh, mw = trace.size
    return boxes * np.array([w / mw, h / mh, w / mw, h / mh])


def _grid(img: np.ndarray, trace: Trace, step: StageTrace, keep: np.ndarray) -> None:
    h, w = img.shape[:2]
    real = keep & (step.ids >= 0)
    boxes = np.rint(_to_display(trace, step.boxes[real], h, w)).astype(np.int32)
    scales = step.scales[real]
    thick = max(2, round(w / 400))
    for (x0, y0, x1, y1), s in zip(boxes, scales, strict=True):
        if s == 1:
            cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), FINE, 1, cv2.LINE_8)
    for (x0, y0, x1, y1), s in zip(boxes, scales, strict=True):  # coarse on top: they are the fewer, bolder ones
        if s != 1:
            cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), COARSE, thick, cv2.LINE_8)


def _fused_dots(img: np.ndarray, trace: Trace, step: StageTrace, cell: int) -> None:
    h, w = img.shape[:2]
    members = step.fused & (step.ids >= 0)
    if not members.any():
        return
    boxes = _to_display(trace, step.boxes[members], h, w)
    centres = np.rint((boxes[:, :2] + boxes[:, 2:]) / 2).astype(np.int32)
    r = max(2, round(cell * w / trace.size[1] / 6))
    ring = DROPPED[step.name]
    for x, y in centres:
        cv2.circle(img, (int(x), int(y)), r + 1, (0, 0, 0), -1, cv2.LINE_AA)
        cv2.circle(img, (int(x), int(y)), r, FUSED_DOT, -1, cv2.LINE_AA)
        cv2.circle(img, (int(x), int(y)), r, ring, 1, cv2.LINE_AA)


def render(base: np.ndarray, trace: Trace, stage: str, layers: Layers = Layers()) -> np.ndarray:
    """One view (`patching`, `ats1` or `ats2`) of `trace` drawn on a copy of `base`."""
    if stage not in STAGE_NAMES:
        raise ValueError(f"stage must be one of {STAGE_NAMES}, got {stage!r}")
    img = base.copy()
    h, w = img.shape[:2]
    cell = cell_size(trace)
    gh, gw = -(-trace.size[0] // cell), -(-trace.size[1] // cell)
    step = trace.stage(stage)
    if layers.heatmap:
        colours, cover = _heat_cells(step, gh, gw, cell)
        _blend(img, _up(colours, h, w), _up(cover, h, w), HEAT_ALPHA)
    if layers.dropped and stage != "patching":
        colours, mask = _dropped_cells(trace, stage, gh, gw, cell)
        _grey_out(img, _up(colours, h, w), _up(mask, h, w), DROP_ALPHA)
    if layers.grid:
        _grid(img, trace, step, step.kept)
    if layers.dropped and stage != "patching":
        _fused_dots(img, trace, step, cell)
    return img


def render_all(base: np.ndarray, trace: Trace, layers: Layers = Layers()) -> list[np.ndarray]:
    return [render(base, trace, s, layers) for s in STAGE_NAMES]


def _swatch(rgb: tuple[int, int, int], border: str = "#444", width: int = 1, radius: str = "2px") -> str:
    return (f'<span style="display:inline-block;width:14px;height:14px;vertical-align:-2px;'
            f'background:rgb{rgb};border:{width}px solid {border};border-radius:{radius};margin-right:4px"></span>')


def legend_html(patch: int = PATCH) -> str:
    """The colours used by `render`, as a compact HTML legend (kept here so both stay in sync)."""
    lo, hi = (cv2.applyColorMap(np.array([[v]], np.uint8), HEAT_MAP)[0, 0, ::-1] for v in (0, 255))
    heat = (f'<span style="display:inline-block;width:60px;height:12px;vertical-align:-1px;'
            f'background:linear-gradient(90deg, rgb{tuple(int(c) for c in lo)}, '
            f'rgb{tuple(int(c) for c in cv2.applyColorMap(np.array([[128]], np.uint8), HEAT_MAP)[0, 0, ::-1])}, '
            f'rgb{tuple(int(c) for c in hi)});margin-right:4px"></span>')
    items = [
        f'<span style="display:inline-block;width:14px;height:14px;vertical-align:-2px;border:1px solid rgb{FINE};'
        f'outline:1px solid #333;margin-right:4px"></span>fine {patch} px token',
        f'<span style="display:inline-block;width:14px;height:14px;vertical-align:-2px;border:3px solid rgb{COARSE};'
        f'margin-right:4px"></span>coarse {2 * patch} px token',
        f"{heat}score: low &rarr; high (gate detail / ATS significance per area)",
        f"{_swatch(DROPPED['ats1'])}dropped by ATS1",
        f"{_swatch(DROPPED['ats2'])}dropped by ATS2",
        f"{_swatch(FUSED_DOT, border='rgb(255,120,0)', radius='50%')}merged into the fused token (fuse modes)",
    ]
    return ('<div class="adavit-legend" style="display:flex;flex-wrap:wrap;gap:6px 18px;font-size:0.9em">'
            + "".join(f"<span>{i}</span>" for i in items) + "</div>")


class ViewFiles:
    """Writes views as JPEG (quality 90: crisp 1 px lines, ~100 KB) into one folder, keeping the newest `keep`.

    The app returns these paths to Gradio instead of arrays, so encoding is part of the measured
    server time and the quality is ours (Gradio's own JPEG path uses quality 75).
    """

    def __init__(self, folder: str | Path, keep: int = 600, quality: int = 90):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.keep, self.quality = keep, quality
        self._written: deque[Path] = deque()
        self._lock = threading.Lock()
        self._n = itertools.count()

    def save(self, img: np.ndarray) -> str:
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise RuntimeError("OpenCV could not encode a view as JPEG")
        path = self.folder / f"view-{os.getpid()}-{next(self._n)}.jpg"
        path.write_bytes(buf.tobytes())
        with self._lock:
            self._written.append(path)
            while len(self._written) > self.keep:
                self._written.popleft().unlink(missing_ok=True)
        return str(path)
