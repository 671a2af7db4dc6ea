"""What `adavit compare` writes besides JSON: the plotly chart and the README table with AdaViT's margins."""
from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

COLOURS = {"adavit": "crimson", "resolution": "black", "random": "gray", "evit": "darkorange", "ats": "royalblue",
           "tome": "seagreen", "resolution (own weights)": "dimgray"}  # compare.OWN
AXES = (("gflops", "mean GFLOPs per image"), ("latency_ms_b1", "batch-1 CPU latency (ms)"))


def measured(points: list[dict]) -> list[dict]:
    return [p for p in points if p.get("settings") is not None and p.get("top1") is not None]


def figure(out: dict, title: str = "Token reduction at matched compute, Flowers-102 val") -> go.Figure:
    """Top-1 (all val) against GFLOPs and against batch-1 latency: one line per strategy, full-token star."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=[f"top-1 vs {t}" for _, t in AXES], horizontal_spacing=0.08)
    for col, (key, axis) in enumerate(AXES, start=1):
        for name, pts in out["strategies"].items():
            pts = [p for p in measured(pts) if p.get(key) is not None]
            fig.add_trace(go.Scatter(
                x=[p[key] for p in pts], y=[100 * p["top1"] for p in pts], mode="lines+markers", name=name,
                line={"color": COLOURS.get(name)}, legendgroup=name, showlegend=col == 1,
                text=[f"{name} @ {p['budget']:.0%}{at_side(p)}<br>{p['settings']}<br>top-1 {100 * p['top1']:.2f}% "
                      f"(report half {100 * p['top1_report']:.2f}%)" for p in pts], hoverinfo="text"),
                row=1, col=col)
        full = out["full"]
        if full.get(key) is not None:
            fig.add_trace(go.Scatter(x=[full[key]], y=[100 * full["top1"]], mode="markers", name="every token",
                                     marker={"symbol": "star", "size": 16, "color": "gold",
                                             "line": {"color": "black", "width": 1}},
                                     legendgroup="full", showlegend=col == 1), row=1, col=col)
        fig.update_xaxes(title_text=axis, row=1, col=col)
        fig.update_yaxes(title_text="top-1 (%)", row=1, col=col)
    fig.update_layout(title=title, width=1300, height=560, hovermode="closest", template="plotly_white")
    return fig


def _cell(p: dict | None) -> str:
    if not p or p.get("settings") is None:
        return "n/a"
    flag = "" if p.get("within_tolerance", True) else " (off budget)"
    return f"{100 * p['top1']:.2f}% ({100 * p['top1_report']:.2f}%) @ {p['gflops']:.2f}{at_side(p)}{flag}"


def at_side(p: dict) -> str:
    """Where a point took a larger decode than the 224 px the budgets are shares of, say so."""
    side = p.get("side", 224)
    return "" if side == 224 else f" [{side} px]"


def margins(out: dict) -> list[dict]:
    """Per budget: AdaViT's top-1 minus the best other strategy's, on all val and on the report half."""
    rows = []
    for i, budget in enumerate(out["budgets"]):
        at = {n: pts[i] for n, pts in out["strategies"].items() if i < len(pts) and pts[i].get("settings")}
        ours = at.get("adavit")
        others = {n: p for n, p in at.items() if n != "adavit"}
        if ours is None or not others:
            continue
        best = max(others, key=lambda n: others[n]["top1"])
        best_rep = max(others, key=lambda n: others[n]["top1_report"])
        paired = ours.get("paired") or {}
        rows.append({"budget": budget, "best_other": best, "margin": ours["top1"] - others[best]["top1"],
                     "best_other_report": best_rep,
                     "margin_report": ours["top1_report"] - others[best_rep]["top1_report"],
                     "paired": (paired.get(best) or {}).get("all"),
                     "paired_report": (paired.get(best_rep) or {}).get("report")})
    return rows


def _images(paired: dict | None) -> str:
    """The images a margin rests on: only AdaViT right / only the other right, McNemar's exact p."""
    return "" if not paired else f" (+{paired['gained']} / -{paired['lost']}, p = {paired['p_value']:.2f})"


def markdown(out: dict) -> str:
    names = list(out["strategies"])
    lines = [
        "| budget (share of full GFLOPs) | " + " | ".join(names) + " | AdaViT margin over the best other |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    by_budget = {m["budget"]: m for m in margins(out)}
    for i, budget in enumerate(out["budgets"]):
        cells = [_cell(out["strategies"][n][i] if i < len(out["strategies"][n]) else None) for n in names]
        m = by_budget.get(budget)
        margin = "n/a" if m is None else (f"{100 * m['margin']:+.2f} pts vs {m['best_other']}{_images(m['paired'])} "
                                          f"(report half: {100 * m['margin_report']:+.2f} vs {m['best_other_report']}"
                                          f"{_images(m['paired_report'])})")
        lines.append(f"| {budget:.0%} ({budget * out['full']['gflops']:.2f}) | " + " | ".join(cells) + f" | {margin} |")
    f = out["full"]
    chosen = (f"Settings: the points `{out['at']}` chose, nothing searched; select half: " if out.get("at") else
              "Settings chosen on the select half: ")
    lines += [
        "",
        f"On {out['protocol']['all']}. Every token: {100 * f['top1']:.2f}% top-1 at {f['gflops']:.2f} GFLOPs. "
        "Cells: top-1 on all of them "
        f"(on the report half) @ mean GFLOPs; [N px]: the point took the images decoded at N px (sides "
        f"offered: {', '.join(map(str, out['protocol'].get('sides', [224])))} px). "
        f"{chosen}{out['protocol']['select']}; "
        "margins: (+images only AdaViT gets right / -images only the other gets right, McNemar's exact p); "
        f"the report half is {out['protocol']['report']}. GFLOPs: {out['protocol']['gflops']}. "
        f"Attention: {out['protocol'].get('attention', 'global in every block')}.",
        f"Command: `{out['command']}`",
    ]
    for key, t in (out.get("tuned") or {}).items():
        lines += ["", f"{key}: `{t['strategy']}` on its own fine-tuned weights, `{t['checkpoint']}` (sha256 "
                  f"{t['sha256'][:12]}); the other columns share one network."]
    d = out.get("default")
    if d:
        how = (f"the default `{out['at']}` chose" if out.get("at") else
               f"the best top-k setting on the select half at most {d['max_share']:.1%} of the full-token GFLOPs")
        of = f", of {d['candidates']} settings that fit" if "candidates" in d else ""
        if d.get("min_speedup"):
            how += f" and at least {d['min_speedup']}x faster than timm's full-token forward at batch 1"
            if d.get("settings"):
                of += (f"; measured {d['speedup_b1']:.2f}x, after {len(d['too_slow'])} settings better on the select "
                       "half were too slow")
        lines += ["", f"Default setting ({how}): " + ("n/a, " + d["missing"] if d.get("settings") is None else
                  f"`{d['settings']['settings']}`, top-1 {100 * d['top1']:.2f}% on all (report half "
                  f"{100 * d['top1_report']:.2f}%), weighted F1 {100 * d['weighted_f1']:.2f}%, {d['gflops']:.2f} "
                  f"GFLOPs ({f['gflops'] / d['gflops']:.2f}x fewer){of}.")]
    lat = [(n, p) for n in names for p in measured(out["strategies"][n]) if p.get("latency_ms_b1") is not None]
    if lat:
        lines += ["", "| strategy | budget | settings | batch-1 ms | batch-32 ms |", "|---|---|---|---|---|"]
        if f.get("latency_ms_b1") is not None:
            lines.append(f"| every token | 100% | 224 px | {f['latency_ms_b1']:.1f} | {f['latency_ms_b32']:.0f} |")
        for n, p in lat:
            lines.append(f"| {n} | {p['budget']:.0%} | `{p['settings']}`{at_side(p)} | {p['latency_ms_b1']:.1f} | "
                         f"{p['latency_ms_b32']:.0f} |")
    return "\n".join(lines)
