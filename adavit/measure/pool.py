"""Several `compare --on holdout` runs on disjoint held-out folds, read as one measurement with its spread.

    python -m adavit pool results/compare_holdout_f0.json results/compare_holdout_f1.json ... --json results/pool.json

One fold of 2 train images per class is 204 images: one image is 0.49 points, and a margin of a point rests
on a handful of images. Runs trained with `train --holdout 2 --holdout-fold K` (K = 0, 1, ...; same --seed)
hold out disjoint images, so their compares add up: a strategy's pooled top-1 is over every fold's images,
AdaViT's paired counts against a strategy are summed over the folds (McNemar's exact p on the sums), and each
fold's own margin shows the spread from fold to fold (one training run per fold, so the spread is the data's
and the run's together). Each fold keeps the settings its own select half chose; nothing is re-chosen.
Runs on the same images (val, or one fold twice) are refused: their counts would count an image twice.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from scipy.stats import binomtest

from ..weights import checkpoint
from . import cli, metrics

# protocol fields that must agree for two runs to be one measurement (the image counts may differ)
SAME = ("tolerance", "candidates_per_budget", "sides", "resolution", "attention")


def held_out(run: dict, path: Path) -> set[str]:
    """The images a compare ran on: its `holdout_files`, or (older runs) its checkpoint card's."""
    if run.get("on") != "holdout":
        raise ValueError(f"{path} ran on {run.get('on')}, not on held-out train images: pool adds up disjoint "
                         "held-out folds (compare --on holdout on runs trained with --holdout-fold K)")
    files = run.get("holdout_files")
    if files is None:
        card = Path(run["checkpoint"])
        if not card.is_file():
            raise ValueError(f"{path} does not list its images and its checkpoint {card} is not here to read them "
                             "from; rerun that compare (it now writes holdout_files)")
        files = (checkpoint.read_card(card).get("selection") or {}).get("holdout_files") or ()
    return set(files)


def check(runs: Sequence[dict], paths: Sequence[Path]) -> None:
    first, where = runs[0], paths[0]
    for run, path in zip(runs[1:], paths[1:], strict=True):
        if run["budgets"] != first["budgets"]:
            raise ValueError(f"{path} has budgets {run['budgets']}, {where} {first['budgets']}")
        if list(run["strategies"]) != list(first["strategies"]):
            raise ValueError(f"{path} compares {list(run['strategies'])}, {where} {list(first['strategies'])}")
        for key in SAME:
            if run["protocol"].get(key) != first["protocol"].get(key):
                raise ValueError(f"{path} has protocol {key} = {run['protocol'].get(key)}, {where} "
                                 f"{first['protocol'].get(key)}")
    images = [held_out(r, p) for r, p in zip(runs, paths, strict=True)]
    for i in range(len(runs)):
        for j in range(i):
            shared = images[i] & images[j]
            if shared:
                raise ValueError(f"{paths[i]} and {paths[j]} share {len(shared)} of their images (e.g. "
                                 f"{sorted(shared)[0]}); pool needs disjoint folds (train --holdout-fold K)")


def spread(values: Sequence[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


def pool(runs: Sequence[dict], paths: Sequence[Path]) -> dict:
    check(runs, paths)
    sizes = [len(held_out(r, p)) for r, p in zip(runs, paths, strict=True)]
    total = sum(sizes)

    def pooled(values: Sequence[float]) -> float:  # top-1 over every fold's images
        return sum(v * n for v, n in zip(values, sizes, strict=True)) / total

    strategies, margins = {}, []
    for name in runs[0]["strategies"]:
        strategies[name] = []
        for i, budget in enumerate(runs[0]["budgets"]):
            pts = [r["strategies"][name][i] for r in runs]
            if any(p.get("settings") is None for p in pts):
                strategies[name].append({"budget": budget, "top1": None, "missing": "not measured in every fold"})
                continue
            folds = [p["top1"] for p in pts]
            strategies[name].append({"budget": budget, "top1": pooled(folds), "top1_folds": folds,
                                     "top1_sd": spread(folds), "gflops": pooled([p["gflops"] for p in pts]),
                                     "within_tolerance": all(p.get("within_tolerance", True) for p in pts),
                                     "settings_folds": [p["settings"] for p in pts],
                                     "sides": [p.get("side", 224) for p in pts]})
    for i, budget in enumerate(runs[0]["budgets"]):
        ours = strategies.get("adavit", [None] * (i + 1))[i]
        others = {n: pts[i] for n, pts in strategies.items() if n != "adavit" and pts[i]["top1"] is not None}
        if not ours or ours["top1"] is None or not others:
            continue
        best = max(others, key=lambda n: others[n]["top1"])
        counts = [r["strategies"]["adavit"][i].get("paired", {}).get(best, {}).get("all") for r in runs]
        paired = None
        if all(counts):
            gained, lost = sum(c["gained"] for c in counts), sum(c["lost"] for c in counts)
            paired = {"gained": gained, "lost": lost,
                      "p_value": float(binomtest(gained, gained + lost, 0.5).pvalue) if gained + lost else 1.0}
        own = []  # each fold's margin over its own best other, as `compare` reports it
        for r in runs:
            at = {n: pts[i]["top1"] for n, pts in r["strategies"].items() if pts[i].get("settings")}
            own.append(at["adavit"] - max(v for n, v in at.items() if n != "adavit"))
        vs_best = [a - b for a, b in zip(ours["top1_folds"], others[best]["top1_folds"], strict=True)]
        margins.append({"budget": budget, "best_other": best, "margin": ours["top1"] - others[best]["top1"],
                        "paired": paired, "margin_folds": vs_best, "margin_sd": spread(vs_best),
                        "own_best_margin_folds": own, "own_best_margin_mean": statistics.mean(own),
                        "own_best_margin_sd": spread(own)})
    full = [r["full"]["top1"] for r in runs]
    return {"on": "holdout", "folds": [{"json": str(p), "checkpoint": r["checkpoint"], "images": n,
                                        "tuned": {k: t["checkpoint"] for k, t in (r.get("tuned") or {}).items()}}
                                       for r, p, n in zip(runs, paths, sizes, strict=True)],
            "images": total, "budgets": runs[0]["budgets"],
            "full": {"top1": pooled(full), "top1_folds": full, "gflops": runs[0]["full"]["gflops"]},
            "strategies": strategies, "margins": margins}


def pct(v: float | None, sign: bool = False) -> str:
    return "n/a" if v is None else f"{100 * v:{'+' if sign else ''}.2f}"


def markdown(out: dict) -> str:
    names = list(out["strategies"])
    k = len(out["folds"])
    lines = ["| budget | " + " | ".join(names) + " | AdaViT margin over the best other (pooled) | per fold | "
             "per fold, over its own best other |", "|---|" + "---|" * (len(names) + 3)]
    by_budget = {m["budget"]: m for m in out["margins"]}
    for i, budget in enumerate(out["budgets"]):
        cells = []
        for n in names:
            p = out["strategies"][n][i]
            cells.append("n/a" if p["top1"] is None else
                         f"{pct(p['top1'])}% ({' / '.join(pct(v) for v in p['top1_folds'])}) @ {p['gflops']:.2f}")
        m = by_budget.get(budget)
        if m is None:
            tail = ["n/a", "n/a", "n/a"]
        else:
            c = m["paired"]
            images = "" if not c else f" (+{c['gained']} / -{c['lost']}, p = {c['p_value']:.2f})"
            sd = "" if m["own_best_margin_sd"] is None else f", sd {pct(m['own_best_margin_sd'])}"
            tail = [f"{pct(m['margin'], True)} vs {m['best_other']}{images}",
                    " / ".join(pct(v, True) for v in m["margin_folds"]),
                    f"{' / '.join(pct(v, True) for v in m['own_best_margin_folds'])} (mean "
                    f"{pct(m['own_best_margin_mean'], True)}{sd})"]
        lines.append(f"| {budget:.0%} | " + " | ".join(cells) + " | " + " | ".join(tail) + " |")
    f = out["full"]
    lines += ["", f"{k} disjoint held-out folds, {out['images']} train images in all "
              f"({' + '.join(str(x['images']) for x in out['folds'])}). Cells: top-1 over all of them (per fold) "
              "@ mean GFLOPs; each fold's settings were chosen on its own select half. Every token: "
              f"{pct(f['top1'])}% ({' / '.join(pct(v) for v in f['top1_folds'])}). Pooled margin: over the strategy "
              "best on the pooled images, with AdaViT's paired counts summed over the folds (+images only AdaViT "
              "gets right / -images only the other does, McNemar's exact p); sd: across folds.",
              f"Command: `{out['command']}`"]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adavit pool", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="compare --on holdout JSONs, one per disjoint fold")
    p.add_argument("--json", required=True, type=Path, help="write the pooled results here (and the table as .md)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = cli.parse(parser(), argv)
    try:
        if len(args.runs) < 2:
            raise ValueError("pool needs two or more compare runs (one per held-out fold)")
        runs = []
        for path in args.runs:
            try:
                runs.append(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(f"can't read {path} as a compare JSON: {e}") from None
            if "strategies" not in runs[-1] or "budgets" not in runs[-1]:
                raise ValueError(f"{path} is not a compare JSON (no strategies or budgets)")
        out = pool(runs, args.runs)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out["command"] = args.command
    metrics.write_json(args.json, out)
    table = markdown(out)
    args.json.with_suffix(".md").write_text(table + "\n")
    print(table)
    print(f"wrote {args.json} and {args.json.with_suffix('.md')}")
    return 0
