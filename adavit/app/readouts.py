"""The app's numbers as text: top-5, the out-of-distribution hint, tokens, GFLOPs, latency, server time.

Pure formatting of an `analysis.Analysis`, so the UI, the API JSON and the tests read the same values.
"""
from __future__ import annotations

import html

from .analysis import REFERENCE_SIDE, Analysis
from .cost import flop_convention


def full_tokens(resolution: int, patch: int = 14, prefix: int = 1) -> int:
    """Tokens of the plain ViT at this side, prefix included (257 at 224 for ViT-S/14)."""
    return (resolution // patch) ** 2 + prefix


def top5(result: Analysis) -> dict[str, float]:
    """For gr.Label: name -> probability, best first."""
    return {name: round(p, 4) for name, p in result.top5}


def hint(result: Analysis, trained: bool) -> str:
    """Markdown: is this photo like the training data (the OOD score), and how sure is the top class."""
    if not trained:
        return "⚠️ **Untrained weights**: these classes are not predictions (see the model line at the top)."
    top = f"top class {100 * result.max_prob:.0f}%"
    o = result.ood
    if o is None:  # a timm model by name, a test model: no statistics to compare with
        return (f"No out-of-distribution check for this model (its checkpoint has no OOD statistics), so a photo "
                f"of something else still gets one of its classes; {top}.")
    data = o.dataset or "the training data"
    within = (f"which {100 * o.pass_rate:.0f}% of {data} val photos are within" if o.pass_rate else "the threshold")
    if o.in_distribution:
        return f"Looks like a {data} photo: feature distance {o.score:.0f} ≤ {o.threshold:.0f} ({within}); {top}."
    return (f"🌼❓ **Probably not one of the {o.num_classes} classes of {data}**: this photo's features lie far "
            f"from all of them (distance {o.score:.0f} > {o.threshold:.0f}, {within}). "
            f"The top-5 are the nearest classes, not an identification; {top}.")


def _ratio(ours: float, full: float) -> str:
    """'3.10× less' when ours is cheaper than full-token, '1.20× more' when it is not (tiny models, noise)."""
    if ours <= 0 or full <= 0:
        return "n/a"
    return f"{full / ours:.2f}× less" if full >= ours else f"{ours / full:.2f}× more"


def stats_html(result: Analysis, server_ms: float, render_ms: float) -> str:
    """A compact table: tokens per stage, GFLOPs and latency against full-token, and server time."""
    s = result.settings
    full = result.tokens_full
    tokens = " → ".join(str(t) for t in result.tokens_per_stage)
    rows = [
        ("tokens per stage (CLS incl.)", f"<b>{tokens}</b>", f"full-token: {full} → {full} → {full}"),
        ("GFLOPs", f"<b>{result.gflops:.2f}</b>",
         f"full-token {result.gflops_full:.2f} ({_ratio(result.gflops, result.gflops_full)})"),
        ("latency, batch 1", f"<b>{result.latency_ms:.1f} ms</b>",
         f"full-token {result.latency_ms_full:.1f} ms ({_ratio(result.latency_ms, result.latency_ms_full)})"),
    ]
    if result.reference:  # another side than the one compare's budgets and the README's targets are set at
        ref_ms, ref_gflops = result.reference
        rows.append((f"against every token at {REFERENCE_SIDE} px", "",
                     f"{ref_gflops:.2f} GFLOPs ({_ratio(result.gflops, ref_gflops)}), {ref_ms:.1f} ms "
                     f"({_ratio(result.latency_ms, ref_ms)})"))
    rows += [
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
