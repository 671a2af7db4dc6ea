"""The Compare tab's logic: one photo under every strategy at one compute budget, side by side.

Each strategy runs at the settings `adavit compare` chose for that budget (the card's "compare", on
the select half of val), else at built-in settings of about the same GFLOPs. Each panel draws where
the strategy spent its tokens on the photo: the tokens that reach the last stage (dropped ones
shaded, in the explorer's colours), the every-token grid of the smaller image for the resolution
baseline, and the merged groups (one colour each) for ToMe. Prediction, GFLOPs and batch-1 latency
are measured here, in this process.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..core.config import Settings
from ..core.strategies import STRATEGIES, Outcome, make
from ..core.trace import build_traces
from ..data import load_image, prepare
from ..measure.compare import BUDGETS, from_description
from ..measure.flops import outcome_gflops
from . import overlay

LATENCY_RUNS = 3
GROUP_ALPHA = 0.45

# about 20 / 27 / 35 / 50% of the full-token GFLOPs at 224 px (closed form), used when the card has no
# "compare" results; `adavit compare --update-card` replaces them with settings chosen on val
FALLBACK: dict[float, dict[str, object]] = {
    budget: {"adavit": make("adavit", settings=Settings(*ada)), "resolution": make("resolution", size=size),
             **{n: make(n, split=split, keep=keep) for n in ("random", "evit", "ats")}, "tome": make("tome", r=r)}
    for budget, ada, size, split, keep, r in (
        (0.2, (0.0, 1.0, 0.5), (98, 112), (1, 3, 8), (0.2, 0.5), 86),
        (0.27, (0.3, 0.5, 0.5), (112, 126), (2, 4, 6), (0.2, 0.25), 52),
        (0.35, (0.3, 1.0, 0.25), (126, 140), (2, 4, 6), (0.4, 0.25), 36),
        (0.5, (0.5, 1.0, 0.5), (154, 168), (4, 4, 4), (0.4, 0.25), 24),
    )
}


def budget_label(budget: float) -> str:
    return f"{budget:.0%} of full GFLOPs"


def parse_budget(value) -> float:
    """"20% of full GFLOPs", "20%", 0.2 -> 0.2 (one of BUDGETS)."""
    text = str(value).split("%")[0].strip()
    try:
        b = float(text) / 100 if "%" in str(value) else float(text)
    except ValueError:
        b = -1.0
    for known in BUDGETS:
        if abs(known - b) < 1e-9:
            return known
    raise ValueError(f"budget must be one of {', '.join(budget_label(x) for x in BUDGETS)}, got {value!r}")


def strategies_at(budget: float, card: dict) -> tuple[dict[str, object], str]:
    """{name: strategy} at this budget, and where the settings came from."""
    chosen = (card.get("compare") or {}).get("strategies") or {}
    budgets = (card.get("compare") or {}).get("budgets") or []
    out, source = dict(FALLBACK[budget]), "built-in settings of about this compute (no compare results in the card)"
    if budget in budgets and chosen:
        i = budgets.index(budget)
        for name, pts in chosen.items():
            if name in STRATEGIES and i < len(pts) and pts[i].get("settings"):
                out[name] = from_description(name, pts[i]["settings"])
        source = "settings chosen by `adavit compare` on the select half of Flowers-102 val (the card)"
    return out, source


def sides_at(budget: float, card: dict) -> dict[str, int]:
    """{name: the image side `adavit compare` gave the strategy at this budget} (224 unless it chose a larger
    decode; see compare --sides). A side the model can't take falls back to 224."""
    compare = card.get("compare") or {}
    budgets, chosen = compare.get("budgets") or [], compare.get("strategies") or {}
    if budget not in budgets:
        return {}
    i = budgets.index(budget)
    return {n: int(pts[i].get("side", 224)) for n, pts in chosen.items()
            if n in STRATEGIES and i < len(pts) and pts[i].get("settings")}


def fit_depth(strategy, depth: int):
    """The same strategy with its stage split scaled to a model of `depth` blocks (the settings are for 12)."""
    split = getattr(strategy, "split", None)
    if split is None or sum(split) == depth:
        return strategy
    ends = np.rint(np.cumsum(split) / sum(split) * depth).astype(int)
    ends = np.maximum.accumulate(np.maximum(ends, np.arange(1, len(split) + 1)))
    ends = np.minimum(ends, depth - np.arange(len(split) - 1, -1, -1))
    return dataclasses.replace(strategy, split=tuple(int(n) for n in np.diff(np.concatenate([[0], ends]))))


@dataclass
class Panel:
    name: str
    image: np.ndarray  # RGB drawing
    label: str  # top-1 class name
    prob: float
    gflops: float
    latency_ms: float
    tokens: list[int]  # tokens entering blocks 0, depth/3, 2*depth/3 (CLS incl.)
    settings: str

    def caption(self) -> str:
        return (f"{self.name}: {self.label} ({100 * self.prob:.0f}%), {self.gflops:.2f} GFLOPs, "
                f"{self.latency_ms:.0f} ms, tokens {'/'.join(map(str, self.tokens))}")

    def to_json(self) -> dict:
        return {"strategy": self.name, "prediction": self.label, "probability": round(self.prob, 4),
                "gflops": round(self.gflops, 4), "latency_ms": round(self.latency_ms, 2),
                "tokens_per_stage": self.tokens, "settings": self.settings}


def _groups(base: np.ndarray, outcome: Outcome) -> np.ndarray:
    """ToMe: every merged group in its own colour, group borders in white."""
    h, w = base.shape[:2]
    mh, mw = outcome.layout.size
    gh, gw = mh // 14, mw // 14
    ids = outcome.groups[0].cpu().numpy().reshape(gh, gw).astype(np.int32)
    rng = np.random.default_rng(0)
    palette = rng.integers(40, 256, size=(int(ids.max()) + 1, 3), dtype=np.uint8)
    big = cv2.resize(ids, (w, h), interpolation=cv2.INTER_NEAREST)
    img = cv2.addWeighted(base, 1 - GROUP_ALPHA, palette[big], GROUP_ALPHA, 0.0)
    edge = np.zeros((h, w), bool)
    edge[:, 1:] |= big[:, 1:] != big[:, :-1]
    edge[1:] |= big[1:] != big[:-1]
    img[edge] = 255
    return img


def draw(base: np.ndarray, outcome: Outcome) -> np.ndarray:
    """Where one strategy spent its tokens, drawn on `base` (the crop the model saw, at display size)."""
    if outcome.groups is not None:
        return _groups(base, outcome)
    trace = build_traces(outcome.layout, outcome.selections, outcome.tokens_per_stage)[0]
    last = trace.stages[-1].name  # "ats2" for two samplers, "patching" for the resolution baseline
    return overlay.render(base, trace, last, overlay.Layers(grid=True, heatmap=False, dropped=True))


class Comparer:
    """Runs the strategies for the app; one comparison at a time (the model is shared)."""

    def __init__(self, model, class_names, card: dict):
        self.model = model
        self.names = tuple(class_names)
        self.card = card
        self._lock = threading.Lock()

    def run(self, source, budget: float) -> tuple[list[Panel], str]:
        loaded = load_image(source)
        preps = {224: prepare(loaded.image, 224)}
        base = overlay.display_base(preps[224].crop)
        strategies, where = strategies_at(budget, self.card)
        sides = sides_at(budget, self.card)
        panels = []
        with self._lock, torch.inference_mode():
            for name, strategy in strategies.items():
                strategy = fit_depth(strategy, len(self.model.vit.blocks))
                side = sides.get(name, 224)
                if side % self.model.region:  # the card was written for another backbone's patch
                    side = 224
                if side not in preps:  # the same crop, decoded larger (compare --sides)
                    preps[side] = prepare(loaded.image, side)
                x = preps[side].tensor
                out = strategy.forward(self.model, x)
                times = []
                for _ in range(LATENCY_RUNS):
                    t = time.perf_counter()
                    strategy.forward(self.model, x)
                    times.append(1000 * (time.perf_counter() - t))
                p = out.logits.softmax(-1)[0]
                top = int(p.argmax())
                panels.append(Panel(name, draw(base, out), self.names[top], float(p[top]),
                                    float(outcome_gflops(self.model, out)[0]), float(np.median(times)),
                                    [int(t) for t in out.tokens_per_stage[0]],
                                    repr(strategy) + ("" if side == 224 else f" on the image at {side} px")))
        return panels, where


def table_md(panels: list[Panel], budget: float, where: str) -> str:
    rows = ["| strategy | prediction | GFLOPs | batch-1 ms | tokens per stage | settings |",
            "|---|---|---|---|---|---|"]
    rows += [f"| {p.name} | {p.label} ({100 * p.prob:.0f}%) | {p.gflops:.2f} | {p.latency_ms:.0f} | "
             f"{'/'.join(map(str, p.tokens))} | `{p.settings}` |" for p in panels]
    return (f"**Budget {budget_label(budget)}**; {where}. Latency: median of {LATENCY_RUNS} batch-1 runs, "
            "measured now in this process.\n\n" + "\n".join(rows))


def compare(comparer: Comparer, source, budget) -> tuple[list[tuple[np.ndarray, str]], str, dict]:
    """The tab's three outputs: gallery (image, caption) pairs, the table, and JSON (also the /compare API)."""
    b = parse_budget(budget)
    panels, where = comparer.run(source, b)
    return ([(p.image, p.caption()) for p in panels], table_md(panels, b, where),
            {"budget": b, "settings_from": where, "panels": [p.to_json() for p in panels]})
