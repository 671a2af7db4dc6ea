"""Classification metrics, the confusion-matrix figure and batch-1 latency, shared by evaluate and sweep."""
from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import plotly.graph_objects as go
from scipy.stats import binomtest
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

T = TypeVar("T")


def classification(targets: np.ndarray, preds: np.ndarray, names: Sequence[str]) -> dict:
    """top-1, support-weighted F1 and the per-class table over all `len(names)` classes.

    Classes absent from `targets` get support 0, so they weigh nothing in the weighted F1;
    zero_division=0 scores an undefined precision or recall as 0 instead of warning.
    """
    labels = list(range(len(names)))
    p, r, f, s = precision_recall_fscore_support(targets, preds, labels=labels, zero_division=0)
    per_class = [
        {"index": i, "name": names[i], "precision": float(p[i]), "recall": float(r[i]),
         "f1": float(f[i]), "support": int(s[i])}
        for i in labels
    ]
    return {
        "top1": float(np.mean(targets == preds)) if len(targets) else 0.0,
        "weighted_f1": float(f1_score(targets, preds, labels=labels, average="weighted", zero_division=0)),
        "per_class": per_class,
    }


def paired(without: np.ndarray, with_: np.ndarray) -> dict:
    """Two arms' per-image correctness on the same images: the images only one of them gets right, and
    McNemar's exact two-sided p-value (a binomial test on those discordant images). Two top-1s that
    differ by a point on 1020 images can be 10 images against 0 or 60 against 50; only this says which."""
    gained, lost = int((with_ & ~without).sum()), int((without & ~with_).sum())
    p = float(binomtest(gained, gained + lost, 0.5).pvalue) if gained + lost else 1.0
    return {"gained": gained, "lost": lost, "p_value": p}


def confusion(targets: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted class."""
    return confusion_matrix(targets, preds, labels=list(range(num_classes)))


def top_confusions(matrix: np.ndarray, names: Sequence[str], n: int = 20) -> list[dict]:
    """The `n` largest off-diagonal cells: which class is most often taken for which."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    cells = sorted(zip(*np.nonzero(off), strict=True), key=lambda tp: (-off[tp], tp))[:n]
    return [{"true": names[t], "predicted": names[p], "count": int(off[t, p])} for t, p in cells]


def per_class_table(per_class: list[dict], top1: float, weighted_f1: float) -> str:
    """The per-class table as text, classes with support only (a subset leaves many empty)."""
    width = max([len(c["name"]) for c in per_class] + [10])
    lines = [f"{'class':<{width}}  precision  recall     f1  support"]
    for c in per_class:
        if c["support"]:
            lines.append(f"{c['name']:<{width}}  {c['precision']:9.3f}  {c['recall']:6.3f}  "
                         f"{c['f1']:5.3f}  {c['support']:7d}")
    total = sum(c["support"] for c in per_class)
    lines.append(f"{'accuracy':<{width}}  {'':9}  {'':6}  {top1:5.3f}  {total:7d}")
    lines.append(f"{'weighted f1':<{width}}  {'':9}  {'':6}  {weighted_f1:5.3f}  {total:7d}")
    return "\n".join(lines)


def confusion_figure(matrix: np.ndarray, names: Sequence[str], title: str = "Confusion matrix") -> go.Figure:
    """A heatmap with class names on both axes; hovering shows true, predicted and the count."""
    labels = [f"{i + 1} {n}" for i, n in enumerate(names)]
    fig = go.Figure(go.Heatmap(
        z=matrix, x=labels, y=labels, colorscale="Blues",
        hovertemplate="true: %{y}<br>predicted: %{x}<br>images: %{z}<extra></extra>",
    ))
    side = max(600, 9 * len(names))
    fig.update_layout(
        title=title, width=side + 250, height=side + 200,
        xaxis={"title": "predicted", "tickfont": {"size": 7}},
        yaxis={"title": "true", "autorange": "reversed", "tickfont": {"size": 7}},
    )
    return fig


def median_ms(run: Callable[[T], object], inputs: Sequence[T], warmup: int = 3) -> float:
    """Median wall time of `run(x)` over `inputs` in milliseconds, after `warmup` untimed runs.

    The median, not the mean: one scheduler hiccup on a shared CPU must not move the number.
    """
    if not inputs:
        raise ValueError("latency needs at least one input to time")
    for _ in range(warmup):
        run(inputs[0])
    times = []
    for x in inputs:
        t0 = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times))


def write_json(path: str | Path, data: dict) -> Path:
    """Write via a temp file and rename, so an interrupted run never leaves half a JSON file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
    return path


def write_report(json_path: str | Path, out: dict, table: str, md_path: str | Path | None = None) -> None:
    """Print the README table, then write the JSON and the table (default: the JSON's name with .md)."""
    print(table)
    print(f"wrote {write_json(json_path, out)}")
    md = Path(md_path or Path(json_path).with_suffix(".md"))
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(table + "\n")
    print(f"wrote {md}")


def write_html(fig: go.Figure, path: str | Path) -> Path:
    """Self-contained HTML (plotly.js inlined): it opens offline, where these runs happen."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs=True)
    return path
