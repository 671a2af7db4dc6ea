"""The app's numbers as text: top-5, the not-a-flower hint, tokens, GFLOPs, latency, server time.

Pure formatting of an `analysis.Analysis`, so the UI, the API JSON and the tests read the same values.
"""
from __future__ import annotations

import html

from ..core.config import PATCH
from .analysis import Analysis
from .cost import flop_convention


def full_tokens(resolution: int) -> int:
    """Tokens of the plain ViT at this side, CLS included (257 at 224)."""
    return (resolution // PATCH) ** 2 + 1


def top5(result: Analysis) -> dict[str, float]:
    """For gr.Label: name -> probability, best first."""
    return {name: round(p, 4) for name, p in result.top5}


def hint(result: Analysis, trained: bool) -> str:
    """Markdown: a warning when the image is probably not a flower (or the weights are untrained)."""
    if not trained:
        return "⚠️ **Untrained weights**: these classes are not predictions (see the model line at the top)."
    if result.not_a_flower:
        # softmax confidence cannot tell "no flower" from "a flower photographed unlike Flowers-102"
        return (f"🌼❓ **Unsure: probably not a flower, or not one of the 102 Flowers-102 species as that dataset "
                f"photographs them**: the top class has only "
                f"{100 * result.max_prob:.0f}% and the prediction is spread out "
                f"(entropy {100 * result.entropy_share:.0f}% of the maximum).")
    return (f"Confident: top class {100 * result.max_prob:.0f}%, "
            f"entropy {100 * result.entropy_share:.0f}% of the maximum.")


def _ratio(ours: float, full: float) -> str:
    """'3.10× less' when ours is cheaper than full-token, '1.20× more' when it is not (tiny models, noise)."""
    if ours <= 0 or full <= 0:
        return "n/a"
    return f"{full / ours:.2f}× less" if full >= ours else f"{ours / full:.2f}× more"


def stats_html(result: Analysis, server_ms: float, render_ms: float) -> str:
    """A compact table: tokens per stage, GFLOPs and latency against full-token, and server time."""
    s = result.settings
    full = full_tokens(s.resolution)
    tokens = " → ".join(str(t) for t in result.tokens_per_stage)
    rows = [
        ("tokens per stage (CLS incl.)", f"<b>{tokens}</b>", f"full-token: {full} → {full} → {full}"),
        ("GFLOPs", f"<b>{result.gflops:.2f}</b>",
         f"full-token {result.gflops_full:.2f} ({_ratio(result.gflops, result.gflops_full)})"),
        ("latency, batch 1", f"<b>{result.latency_ms:.1f} ms</b>",
         f"full-token {result.latency_ms_full:.1f} ms ({_ratio(result.latency_ms, result.latency_ms_full)})"),
        ("server time", f"<b>{server_ms:.0f} ms</b>",
         "from the request to these overlays and numbers" + (" (cached: no model run)" if result.cached else "")),
    ]
    body = "".join(f"<tr><td>{html.escape(a)}</td><td>{b}</td><td>{c}</td></tr>" for a, b, c in rows)
    notes = (f"Latency: patching + stage 1 {result.stage1_ms:.1f} ms (faster of 2 runs when this image and "
             f"fine ratio were first run) + ATS1 → head {result.rest_ms:.1f} ms (measured now); "
             f"full-token: median of 3 runs at {s.resolution} px in this process. "
             f"Overlays drawn and encoded in {render_ms:.0f} ms. "
             f"FLOPs: {html.escape(flop_convention())}.")
    return (f'<table class="adavit-stats" style="width:100%;font-size:0.95em">{body}</table>'
            f'<div style="font-size:0.8em;opacity:0.75;margin-top:4px">{notes}</div>')


def notes_md(result: Analysis) -> str:
    """What was done to the upload (EXIF rotation, crop of a panorama, ...), for the status line."""
    return "; ".join(result.notes)
