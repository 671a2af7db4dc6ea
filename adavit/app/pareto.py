"""The app's Pareto chart: top-1 against GFLOPs and against latency, with the current setting marked.

Grey points and the blue front are the shipped sweep (whole val split; `sweep.pareto` picks the
front); green points are settings evaluated live in this process (stratified val subset); the red
star is where the sliders are now. Its accuracy is live or from the sweep, as its hover text says.
Black and orange lines are the fronts AdaViT must beat: the resolution baseline (every token of a
smaller image; the card's "sweep_resolution", else its "compare") and the best peer strategy of
`adavit compare` (EViT, ATS, ToMe or random, whichever has the best mean top-1 over the budgets). A grey
dash-dot line is the resolution baseline on weights fine-tuned at low sides (`compare --tuned`), when the
card has it: the strongest simple baseline is another network, not only another token rule.
"""
from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..measure.compare import OWN
from ..measure.sweep import label as sweep_label
from ..measure.sweep import pareto
from .live_accuracy import Accuracy, describe_setting

AXES = (("gflops_mean", "GFLOPs per image"), ("latency_ms_b1", "batch-1 CPU latency (ms)"))
PEER_STYLE = {"resolution": {"color": "black", "dash": "dot"}, "tuned": {"color": "dimgray", "dash": "dashdot"},
              "peer": {"color": "darkorange", "dash": "dash"}}
TUNED = "resolution" + OWN


def _compare_points(points: list[dict]) -> list[dict]:
    return [{"top1": p["top1"], "gflops_mean": p["gflops"], "latency_ms_b1": p.get("latency_ms_b1"),
             "label": f"{p['budget']:.0%} budget: {p['settings']}"} for p in points if p.get("settings")]


def peer_fronts(card: dict) -> dict[str, tuple[str, list[dict]]]:
    """{"resolution" | "tuned" | "peer": (legend name, points with top1 / gflops_mean / latency_ms_b1)} from the
    card."""
    out: dict[str, tuple[str, list[dict]]] = {}
    compare = (card.get("compare") or {}).get("strategies") or {}
    if card.get("sweep_resolution"):
        out["resolution"] = ("resolution baseline (sweep)", [
            {**p, "label": f"every token at {p['side']} px"} for p in card["sweep_resolution"]])
    elif compare.get("resolution"):
        out["resolution"] = ("resolution baseline (compare)", _compare_points(compare["resolution"]))
    if compare.get(TUNED):
        out["tuned"] = ("resolution baseline, own low-res weights (compare)", _compare_points(compare[TUNED]))
    peers = {n: _compare_points(pts) for n, pts in compare.items() if n not in ("adavit", "resolution", TUNED)}
    peers = {n: pts for n, pts in peers.items() if pts}
    if peers:
        best = max(peers, key=lambda n: sum(p["top1"] for p in peers[n]) / len(peers[n]))
        out["peer"] = (f"best peer: {best} (compare)", peers[best])
    return out


def _peer_traces(fig: go.Figure, fronts: dict[str, tuple[str, list[dict]]]) -> None:
    for kind, (name, points) in fronts.items():
        for col, (key, _) in enumerate(AXES, start=1):
            pts = sorted((p for p in points if p.get(key) is not None), key=lambda p: p[key])
            if pts:
                fig.add_trace(go.Scatter(
                    x=[p[key] for p in pts], y=[100 * p["top1"] for p in pts], mode="lines+markers", name=name,
                    line={**PEER_STYLE[kind], "width": 2}, marker={"size": 6}, showlegend=col == 1,
                    legendgroup=kind, text=[f"{name}<br>{p['label']}<br>top-1 {100 * p['top1']:.2f}%" for p in pts],
                    hoverinfo="text"), row=1, col=col)


def _sweep_traces(fig: go.Figure, points: list[dict]) -> None:
    for col, (key, _) in enumerate(AXES, start=1):
        pts = [p for p in points if p.get(key) is not None and p.get("top1") is not None]
        if not pts:
            continue
        first = col == 1
        text = [sweep_label({"full": False, "weighted_f1": p.get("weighted_f1") or 0.0, **p}) for p in pts]
        fig.add_trace(go.Scatter(
            x=[p[key] for p in pts], y=[100 * p["top1"] for p in pts], mode="markers", name="sweep (val)",
            marker={"color": "lightgray", "size": 7, "line": {"color": "gray", "width": 1}},
            text=text, hoverinfo="text", showlegend=first, legendgroup="sweep"), row=1, col=col)
        front = pareto([p[key] for p in pts], [p["top1"] for p in pts])
        fig.add_trace(go.Scatter(
            x=[pts[i][key] for i in front], y=[100 * pts[i]["top1"] for i in front], mode="lines",
            name="sweep Pareto front", line={"color": "royalblue", "width": 2}, hoverinfo="skip",
            showlegend=first, legendgroup="front"), row=1, col=col)
        full = [p for p in pts if p.get("full")]
        if full:
            fig.add_trace(go.Scatter(
                x=[p[key] for p in full], y=[100 * p["top1"] for p in full], mode="markers", name="every token",
                marker={"symbol": "square", "size": 10, "color": "black"}, hoverinfo="text",
                text=[sweep_label({"weighted_f1": 0.0, **p}) for p in full], showlegend=first,
                legendgroup="full"), row=1, col=col)


def figure(sweep: list[dict] | None, live: list[Accuracy], current: dict | None, peers: dict | None = None,
           height: int = 380) -> go.Figure:
    """`current`: {"gflops", "latency_ms", "accuracy": Accuracy | None, "settings": dict};
    `peers`: `peer_fronts(card)`."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.09,
                        subplot_titles=[f"top-1 vs {t}" for _, t in AXES])
    _sweep_traces(fig, sweep or [])
    _peer_traces(fig, peers or {})
    live_pts = [a for a in live if a.top1 is not None and a.gflops_mean is not None]
    if live_pts:
        fig.add_trace(go.Scatter(
            x=[a.gflops_mean for a in live_pts], y=[100 * a.top1 for a in live_pts], mode="markers",
            name=f"live ({live_pts[0].n_images} val images)", marker={"color": "seagreen", "size": 8},
            text=[describe_setting(a.settings) + f"<br>{100 * a.top1:.1f}%" for a in live_pts],
            hoverinfo="text"), row=1, col=1)
    if current:
        acc: Accuracy | None = current.get("accuracy")
        where = describe_setting(current["settings"])
        for col, x in ((1, current["gflops"]), (2, current["latency_ms"])):
            if acc is not None and acc.top1 is not None:
                fig.add_trace(go.Scatter(
                    x=[x], y=[100 * acc.top1], mode="markers", name="current setting",
                    marker={"symbol": "star", "size": 18, "color": "crimson", "line": {"color": "white", "width": 1}},
                    text=[f"now: {where}<br>{acc.text}<br>x measured now, in this process"], hoverinfo="text",
                    showlegend=col == 1,
                    legendgroup="now"), row=1, col=col)
            else:
                fig.add_vline(x=x, line={"color": "crimson", "dash": "dash"}, row=1, col=col)
    fig.update_yaxes(title_text="top-1 (%)", row=1, col=1)
    for col, (_, title) in enumerate(AXES, start=1):
        fig.update_xaxes(title_text=title, row=1, col=col)
    fig.update_layout(height=height, margin={"l": 50, "r": 10, "t": 40, "b": 40}, hovermode="closest",
                      legend={"orientation": "h", "y": -0.25}, template="plotly_white")
    has_acc = bool(current and current.get("accuracy") and current["accuracy"].top1 is not None)
    if not (sweep or live_pts or has_acc):
        fig.add_annotation(text="no accuracy to plot: no Flowers-102 data here and no sweep in the card",
                           xref="paper", yref="paper", x=0.5, y=0.5, showarrow=False)
    return fig
