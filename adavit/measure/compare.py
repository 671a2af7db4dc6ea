"""AdaViT against naive and peer token reduction at matched compute, on the same fine-tuned ViT-S/14.

    python -m adavit compare --json results/compare.json [--html results/compare.html] [--data-root DIR]
        [--markdown PATH] [--update-card]

Budgets: 20 / 27 / 35 / 50% of the full-token GFLOPs at 224 px; each point lands within +-5%. For each
strategy and budget, a small grid of settings (core.strategies) is costed on a few images, the closest
few per family that fit the budget are evaluated on the *select* half of val (5 images per class,
stratified, seed 0), and the best of them on the select half is reported on the *report* half (the
other 510 images) and on all of val. Every token-reducing strategy may also take the images decoded
one ring of regions larger (252 px for 14 px patches, same field of view, `--sides`): mixed-scale
patching can spend a larger image's pixels where there is detail, and the peers get the same images.
The resolution baseline resizes the 224 px crop, which holds everything it can use below 224 px.
Latency: batch-1 and batch-32 medians of every chosen point and the full-token forward, timed in
alternating rounds in one process. Per-point results are cached in `<json>.cache.jsonl`, so an
interrupted run resumes where it stopped.

`--at results/compare.json` measures another checkpoint at the points that run chose, with no search:
two checkpoints on the same settings differ only by their weights, not by which settings the select
half happened to favour.

`--tuned resolution=runs/lowres/model.safetensors` adds a strategy run on weights of its own, fine-tuned for it
(here: every token, trained at the low sides downscaling uses), beside the same strategy on the shared
weights: sharing one network isolates the token rule, and the tuned arm asks whether a network trained for
the simple strategy would beat AdaViT. It counts among the others AdaViT's margin is taken over.

`--default-share 0.3333 --default-speedup 2.5 --set-default` chooses the card's default: the best top-k
setting on the select half that costs at most a third of the full-token GFLOPs and runs at batch 1 at
least 2.5x faster than timm's full-token forward on this machine (timed like `bench`).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import data
from ..core.config import Settings, check_side
from ..core.strategies import STRATEGIES, make
from ..weights import checkpoint
from ..weights.soup import sha256
from . import cli, metrics
from .bench import batch1_speedup, interleaved_medians, machine, plain_vit
from .compare_report import figure, markdown
from .flops import CONVENTION, COST_MODEL, outcome_gflops
from .sweep import floats

BUDGETS = (0.2, 0.27, 0.35, 0.5)
TOLERANCE = 0.05  # a point counts at a budget when its mean GFLOPs are within +-5% of it
AIM = 0.035  # candidates are costed on a few images; aim inside the tolerance to leave room for the rest
SELECT_PER_CLASS = 5
SEED = 0
RESOLUTION = 224


# ---------------------------------------------------------------- the grids
def grid(name: str, patch: int = 14, depth: int = 12, side: int = RESOLUTION) -> Iterator[tuple[object, object]]:
    """(strategy, family) for every candidate setting on images decoded at `side` px; a budget evaluates
    the closest of each family. `patch` and `depth` are the model's (14 and 12 for the shipped ViT-S/14)."""
    if name == "resolution":  # square, or one or two patches wider than high (a family each)
        if side != RESOLUTION:  # it resizes the 224 px crop; a larger decode adds nothing below 224 px
            return
        sides = range(4 * patch, RESOLUTION + 1, patch)
        for h in sides:
            for w in sides:
                if 0 <= w - h <= 2 * patch:
                    yield make(name, size=(h, w)), (w - h) // patch
    elif name in ("random", "evit", "ats"):
        for a1, a2 in ((1, 4), (2, 6), (4, 8)):  # prune early enough for 20%, or where AdaViT does
            a1, a2 = max(1, round(a1 * depth / 12)), round(a2 * depth / 12)
            for k1 in (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0):
                for k2 in (0.25, 0.5, 0.75):
                    yield make(name, split=(a1, a2 - a1, depth - a2), keep=(k1, k2)), a1
    elif name == "tome":
        for r in range(4, 129, 2):
            yield make(name, r=r), None
    elif name == "adavit":
        for f in (0.0, 0.1, 0.2, 0.3, 0.5):
            for k1 in (0.25, 0.5, 0.75, 1.0):
                for k2 in (0.25, 0.5, 1.0):
                    for mode, fuse in (("topk", False), ("topk", True), ("sample", False)):
                        yield make(name, settings=Settings(f, k1, k2, mode, fuse, side)), (f, mode, fuse)
    else:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")


def describe(strategy) -> dict:
    """The settings of a strategy as JSON (its dataclass fields, nested Settings flattened)."""
    out = {}
    for f in dataclasses.fields(strategy):
        v = getattr(strategy, f.name)
        out[f.name] = v.to_dict() if hasattr(v, "to_dict") else list(v) if isinstance(v, tuple) else v
    return out


def from_description(name: str, settings: dict):
    """The inverse of `describe`: a strategy from its JSON settings (as stored in the card)."""
    if name == "adavit":
        return make(name, settings=Settings(**settings["settings"]))
    return make(name, **{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()})


# ---------------------------------------------------------------- the cache (resume)
class Cache:
    """One JSON line per finished evaluation, keyed by strategy settings and image set.

    `run` fingerprints the weights and the images (see `fingerprint`): rows of another checkpoint or
    data in the same file are ignored, so a reused --json path never mixes two experiments.
    """

    def __init__(self, path: Path, run: str = ""):
        self.path, self.run = path, run
        self.rows: dict[str, dict] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by an interruption
                    continue
                if row.get("run", "") == run:
                    self.rows[row["key"]] = row

    def get(self, key: str) -> dict | None:
        return self.rows.get(key)

    def put(self, key: str, **value) -> dict:
        row = {"key": key, "run": self.run, **value}
        self.rows[key] = row
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        return row


# ---------------------------------------------------------------- evaluation
@dataclasses.dataclass
class Split:
    images: torch.Tensor  # (N, 3, 224, 224) every val image, eval transform
    targets: np.ndarray  # (N,)
    select: np.ndarray  # indices of the select half (settings are chosen here)
    report: np.ndarray  # the other half (reported, never used to choose)
    names: tuple[str, ...]


def load_split(root, per_class: int, seed: int, workers: int, subset: int | None = None,
               spec: str = data.labelled.FLOWERS, data_seed: int = 0, side: int = RESOLUTION,
               holdout: Sequence[str] = ()) -> Split:
    """Every val image of the data (`spec`, see data.card_data) at `side` px, split into select and
    report halves (the same halves at every side). With `holdout` (file names from a card's
    `selection`), the train images that run held out instead: a selection set that is not val."""
    if holdout:
        pairs = data.open_data(spec, root, seed=data_seed).held_out(holdout)
        ds = data.Files(pairs, data.eval_transform(side))
        if subset is not None:
            ds = torch.utils.data.Subset(ds, data.stratified_subset(ds.targets, subset))
    else:
        ds, _ = data.eval_dataset(root, "val", side, subset, spec=spec, seed=data_seed)
    loader = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=workers)
    xs, ys = [], []
    for x, y in tqdm(loader, desc="load val", unit="batch"):
        xs.append(x)
        ys.append(y)
    targets = torch.cat(ys).numpy()
    select = np.array(data.stratified_subset(targets.tolist(), per_class, seed))
    report = np.setdiff1d(np.arange(len(targets)), select)
    if not len(report):
        raise ValueError(f"--select-per-class {per_class} takes all {len(targets)} images for choosing, none is "
                         "left to report on; lower it, or give the image folder a larger val/ split")
    return Split(torch.cat(xs), targets, select, report, data.open_data(spec, root, seed=data_seed).classes)


def run_on(model, strategy, images: torch.Tensor, idx: np.ndarray, batch: int, desc: str | None = None):
    """Predictions and per-image GFLOPs of `strategy` on images[idx]."""
    preds, gflops = [], []
    with torch.inference_mode():
        for start in tqdm(range(0, len(idx), batch), desc=desc, unit="batch", leave=False, disable=desc is None):
            x = images[torch.as_tensor(idx[start:start + batch])]
            out = strategy.forward(model, x)
            preds.append(out.logits.argmax(1).numpy())
            gflops.append(outcome_gflops(model, out))
    return np.concatenate(preds), np.concatenate(gflops)


def fingerprint(weights: Path, split: Split) -> str:
    """What the cached numbers depend on: the weights' bytes, the images with their halves, and the
    closed form's version (flops.COST_MODEL)."""
    h = hashlib.sha1(weights.read_bytes())
    h.update(f"cost model {COST_MODEL}".encode())
    for a in (split.targets, split.select):
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
    h.update(split.images[:, :, ::16, ::16].numpy().tobytes())  # which images, cheaply
    return h.hexdigest()[:16]


def evaluated(cache: Cache, model, strategy, split: Split, half: str, batch: int) -> dict:
    key = f"{half}|{strategy!r}"
    row = cache.get(key)
    if row is None:
        idx = split.select if half == "select" else split.report if half == "report" else np.arange(len(split.targets))
        preds, gflops = run_on(model, strategy, split.images, idx, batch, desc=f"{strategy.name} on {half}")
        row = cache.put(key, preds=preds.tolist(), gflops=gflops.tolist())
    return row


def correct(cache: Cache, model, strategy, split: Split, batch: int) -> np.ndarray:
    """Per image of the split (select half, then report half): right or wrong. From the cache."""
    preds = [evaluated(cache, model, strategy, split, half, batch)["preds"] for half in ("select", "report")]
    return np.concatenate(preds) == split.targets[np.concatenate([split.select, split.report])]


def costed(cache: Cache, model, strategy, probe: torch.Tensor) -> float:
    """Mean GFLOPs on the probe images: one image for fixed-count strategies (exact), all of them for
    adaptive ones (ATS, sample mode), whose counts change per image (an estimate)."""
    probe = probe if getattr(strategy, "adaptive", False) else probe[:1]
    key = f"cost{len(probe)}|{strategy!r}"
    row = cache.get(key)
    if row is None:
        with torch.inference_mode():
            row = cache.put(key, gflops=float(outcome_gflops(model, strategy.forward(model, probe)).mean()))
    return row["gflops"]


def shortlist(costs: list[tuple[object, object, float]], target: float, n: int) -> list[object]:
    """The candidate nearest the target in each family (within AIM, else within TOLERANCE when nothing is),
    the n nearest families first."""
    for aim in (AIM, TOLERANCE):
        best: dict[object, tuple[float, object]] = {}
        for strategy, family, g in costs:
            off = abs(g / target - 1)
            if off <= aim and (family not in best or off < best[family][0]):
                best[family] = (off, strategy)
        if best:
            break
    return [s for _, s in sorted(best.values(), key=lambda t: t[0])[:n]]


def score(split: Split, idx: np.ndarray, preds: np.ndarray) -> dict:
    return metrics.classification(split.targets[idx], preds, split.names)


def on_select(cache: Cache, model, strategy, split: Split, batch: int) -> dict:
    row = evaluated(cache, model, strategy, split, "select", batch)
    return {"strategy": strategy, "settings": describe(strategy), "gflops_select": float(np.mean(row["gflops"])),
            "top1_select": score(split, split.select, np.array(row["preds"]))["top1"]}


def reported(cache: Cache, model, win: dict, split: Split, full_gflops: float, batch: int) -> dict:
    """The chosen point (`win`: strategy, settings, top1_select) on the report half and on all images."""
    sel = evaluated(cache, model, win["strategy"], split, "select", batch)
    rep = evaluated(cache, model, win["strategy"], split, "report", batch)
    idx = np.concatenate([split.select, split.report])
    preds = np.concatenate([sel["preds"], rep["preds"]])
    gflops = np.concatenate([sel["gflops"], rep["gflops"]])
    all_ = score(split, idx, preds)
    return {"settings": win["settings"], "top1": all_["top1"], "top1_select": win["top1_select"],
            "gflops_select": win["gflops_select"],
            "top1_report": score(split, split.report, np.array(rep["preds"]))["top1"],
            "weighted_f1": all_["weighted_f1"], "gflops": float(gflops.mean()),
            "gflops_share": float(gflops.mean() / full_gflops), "_strategy": win["strategy"]}


def choose(cache: Cache, model, candidates: Sequence[tuple[object, object]], split: Split, full_gflops: float,
           budgets: Sequence[float], n_candidates: int, batch: int, probe: torch.Tensor, label: str = "") -> list[dict]:
    """One point per budget: the best of `candidates` ((strategy, family) pairs, e.g. `grid(name)`) on
    the select half, reported on the other half and on all."""
    costs = [(s, fam, costed(cache, model, s, probe))
             for s, fam in tqdm(list(candidates), desc=f"{label}: cost the grid", unit="setting", leave=False)]
    points = []
    for budget in budgets:
        target = budget * full_gflops
        tried = [on_select(cache, model, s, split, batch) for s in shortlist(costs, target, n_candidates)]
        for t in tried:
            t["within"] = abs(t["gflops_select"] / target - 1) <= TOLERANCE
        if not tried:
            points.append({"budget": budget, "settings": None, "missing": "no setting of the grid fits this budget"})
            continue
        fits = [t for t in tried if t["within"]] or tried
        win = max(fits, key=lambda t: (t["top1_select"], -t["gflops_select"]))
        points.append({"budget": budget, **reported(cache, model, win, split, full_gflops, batch),
                       "within_tolerance": win["within"],
                       "candidates": [{k: v for k, v in t.items() if k != "strategy"} for t in tried]})
    return points


@dataclasses.dataclass
class Venue:
    """The same images decoded at one side (same halves), the cache of their evaluations, and the probe
    images grid settings are costed on."""
    side: int
    split: Split
    cache: Cache
    probe: torch.Tensor


def rank(point: dict) -> tuple:
    """How points compare on the select half: within the budget's tolerance first, then top-1, then fewer
    GFLOPs (the report half never decides)."""
    return point.get("within_tolerance", True), point["top1_select"], -point["gflops_select"]


def best_of(tried: Sequence[tuple[Venue, dict]]) -> tuple[Venue, dict]:
    """The best (venue, point) on the select half (`rank`)."""
    return max(tried, key=lambda t: rank(t[1]))


def choose_at_sides(model, name: str, venues: Sequence[Venue], full_gflops: float, budgets: Sequence[float],
                    n_candidates: int, batch: int) -> list[dict]:
    """`choose` at every decode side (n candidates each), then per budget the best of the sides on the
    select half; the point records its `side` and every side's candidates."""
    depth = len(model.vit.blocks)
    per_side = []
    for v in venues:
        candidates = list(grid(name, model.patch, depth, v.side))
        if candidates:
            per_side.append((v, choose(v.cache, model, candidates, v.split, full_gflops, budgets, n_candidates,
                                       batch, v.probe, f"{name} at {v.side} px")))
    points = []
    for i, budget in enumerate(budgets):
        tried = [(v, pts[i]) for v, pts in per_side if pts[i].get("settings")]
        if not tried:
            points.append({"budget": budget, "settings": None, "missing": "no setting of the grid fits this budget"})
            continue
        v, win = best_of(tried)
        points.append({**win, "side": v.side,
                       "candidates": [{**c, "side": u.side} for u, p in tried for c in p["candidates"]]})
    return points


def at_points(model, name: str, chosen: Sequence[dict], venues: Sequence[Venue], full_gflops: float,
              batch: int) -> list[dict]:
    """The points another run chose (`chosen`: its JSON points of strategy `name`), re-measured: the same
    settings at the same side, nothing searched."""
    by_side = {v.side: v for v in venues}
    points = []
    for p in chosen:
        if not p.get("settings"):
            points.append({k: p[k] for k in ("budget", "settings", "missing") if k in p})
            continue
        v = by_side.get(p.get("side", RESOLUTION))
        if v is None:
            raise ValueError(f"the {name} point at {p['budget']:.0%} was chosen at {p['side']} px, which --sides "
                             f"{','.join(str(u.side) for u in venues)} leaves out")
        win = on_select(v.cache, model, from_description(name, p["settings"]), v.split, batch)
        points.append({"budget": p["budget"], **reported(v.cache, model, win, v.split, full_gflops, batch),
                       "side": v.side})
    return points


def read_points(path: Path, strategies: Sequence[str]) -> dict:
    """The chosen points of an earlier `compare --json` file, or of a card that `compare --update-card` wrote (its
    default from `--set-default`), for --at."""
    try:
        earlier = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"--at {path}: no such file; give the --json of an earlier compare run") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"--at {path} is not a compare JSON file ({e})") from None
    if isinstance(earlier, dict) and isinstance(earlier.get("compare"), dict):  # a card: the shipped points
        earlier = {**earlier["compare"], **({"default": earlier["default_choice"]}
                                            if isinstance(earlier.get("default_choice"), dict) else {})}
    if not isinstance(earlier, dict) or not isinstance(earlier.get("strategies"), dict):
        raise ValueError(f"--at {path} is not a compare JSON file or a card with a \"compare\" key: it has no "
                         "\"strategies\"")
    missing = [n for n in strategies if n not in earlier["strategies"]]
    if missing:
        raise ValueError(f"--at {path} has no points of {', '.join(missing)} (it has "
                         f"{', '.join(earlier['strategies'])}); pass --strategies among those")
    return earlier


def choose_default(model, venues: Sequence[Venue], full_gflops: float, max_share: float, batch: int,
                   min_speedup: float | None = None, runs: int = 10) -> dict:
    """A default setting for the card: the best top-k setting on the select half among AdaViT's top-k settings (the
    deterministic ones, which the app opens at and `export` traces) at every decode side, costing at most
    `max_share` of the full-token GFLOPs, reported on the other half and on all. Chosen like every budget's
    point, so the default's reported accuracy is not chosen on the images it is reported on.

    With `min_speedup`, the settings are tried best first and the first whose batch-1 latency is at least
    that many times lower than timm's full-token forward (`bench`'s ratio, timed here in `runs` alternating
    rounds) wins: FLOPs alone do not say how fast short token sequences run on a CPU. The ones passed over
    are listed in `too_slow`."""
    ceiling = max_share * full_gflops
    tried = []
    for v in venues:
        fit = [s for s, (_, mode, _) in grid("adavit", model.patch, len(model.vit.blocks), v.side)
               if mode == "topk" and costed(v.cache, model, s, v.probe) <= ceiling]
        for s in tqdm(fit, desc=f"default: the settings that fit at {v.side} px", unit="setting", leave=False):
            t = on_select(v.cache, model, s, v.split, batch)
            if t["gflops_select"] <= ceiling:
                tried.append((v, t))
    if not tried:
        return {"max_share": max_share, "settings": None,
                "missing": f"no top-k setting of the grid costs at most {max_share:.0%} of the full-token GFLOPs"}
    if min_speedup is None:
        v, win = best_of(tried)
        return {"max_share": max_share, **reported(v.cache, model, win, v.split, full_gflops, batch), "side": v.side,
                "candidates": len(tried)}
    plain = plain_vit(model, RESOLUTION)
    full_image = next(v for v in venues if v.side == RESOLUTION).probe
    too_slow = []
    for v, t in sorted(tried, key=lambda vt: rank(vt[1]), reverse=True):
        speedup = batch1_speedup(model, plain, t["strategy"].settings, full_image, v.probe, runs)
        tqdm.write(f"default: {t['settings']} at {v.side} px, {100 * t['top1_select']:.2f}% on select, "
                   f"{speedup:.2f}x faster at batch 1")
        if speedup >= min_speedup:
            return {"max_share": max_share, "min_speedup": min_speedup,
                    **reported(v.cache, model, t, v.split, full_gflops, batch), "side": v.side,
                    "candidates": len(tried), "speedup_b1": speedup, "too_slow": too_slow}
        too_slow.append({"settings": t["settings"], "side": v.side, "top1_select": t["top1_select"],
                         "speedup_b1": speedup})
    return {"max_share": max_share, "min_speedup": min_speedup, "settings": None, "too_slow": too_slow,
            "missing": f"none of the {len(tried)} top-k settings at most {max_share:.0%} of the full-token GFLOPs "
                       f"runs {min_speedup}x faster than the full-token forward at batch 1 on this machine"}


def latencies(chosen: dict[str, tuple[object, torch.Tensor, object]], runs_b1: int, runs_b32: int) -> dict:
    """{key: (batch-1 ms, batch-32 ms)}: every chosen (strategy, its images, its model) timed in alternating
    rounds."""
    print(f"latency: {len(chosen)} forwards, batch 1 x {runs_b1} rounds, batch 32 x {runs_b32} rounds", flush=True)
    b1 = interleaved_medians({k: (lambda s=s, x=x[:1], m=m: s.forward(m, x)) for k, (s, x, m) in chosen.items()},
                             runs_b1)
    b32 = interleaved_medians({k: (lambda s=s, x=x[:32], m=m: s.forward(m, x)) for k, (s, x, m) in chosen.items()},
                              runs_b32, warmup=1)
    return {k: (b1[k], b32[k]) for k in chosen}


OWN = " (own weights)"  # the key of a strategy run on weights tuned for it (--tuned)


@dataclasses.dataclass
class Arm:
    """A strategy (`name` in STRATEGIES) on a model, with the venues (caches keyed by that model's weights)."""
    name: str
    model: object
    venues: Sequence[Venue]


def tuned_arm(name: str, weights: Path, model, venues: Sequence[Venue], cache_path: Path) -> Arm:
    """Strategy `name` on `weights`, its own fine-tuned network; it must be the same architecture on the same
    classes as `model`, or its GFLOPs and labels would not be comparable."""
    other = checkpoint.load_model(weights)
    same = (other.patch, len(other.vit.blocks), other.vit.embed_dim, other.config.num_classes)
    ours = (model.patch, len(model.vit.blocks), model.vit.embed_dim, model.config.num_classes)
    if same != ours:
        raise ValueError(f"--tuned {name}={weights} is not the compared network's architecture and classes (patch, "
                         f"blocks, width, classes: {same} against {ours}), so its GFLOPs and top-1 would not compare")
    if other.config.class_names and model.config.class_names and other.config.class_names != model.config.class_names:
        raise ValueError(f"--tuned {name}={weights} names its classes in another order than the compared checkpoint; "
                         "its predictions would be scored against the wrong labels")
    return Arm(name, other, [dataclasses.replace(v, cache=Cache(cache_path, fingerprint(weights, v.split)))
                             for v in venues])


def pair_with_adavit(strategies: dict[str, list[dict]], arms: dict[str, Arm], batch: int) -> None:
    """On each budget's AdaViT point, `paired`: image by image against every other strategy's point at that budget
    (the images only AdaViT gets right, those only the other does, McNemar's p), on all images and on the report
    half, so a margin says how many images it rests on. The halves are the same images at every side."""
    def right(key: str, p: dict) -> tuple[np.ndarray, int]:
        arm = arms[key]
        v = next(u for u in arm.venues if u.side == p["side"])
        return correct(v.cache, arm.model, p["_strategy"], v.split, batch), len(v.split.select)

    for i, ours in enumerate(strategies.get("adavit", [])):
        if not ours.get("settings"):
            continue
        a, n_select = right("adavit", ours)
        ours["paired"] = {}
        for key, pts in strategies.items():
            if key != "adavit" and i < len(pts) and pts[i].get("settings"):
                b, _ = right(key, pts[i])
                ours["paired"][key] = {"all": metrics.paired(b, a),
                                       "report": metrics.paired(b[n_select:], a[n_select:])}


def held_out_files(base: Path, others: dict[str, str | Path] | None = None) -> tuple[str, ...]:
    """The base run's held-out train images, which every other checkpoint measured beside it (keyed by the
    flag that named it: `--variant gate`, `--tuned resolution`) must also have held out."""
    selection = checkpoint.read_card(base).get("selection") or {}
    names = tuple(selection.get("holdout_files") or ())
    if not names:
        raise ValueError(f"--on holdout: the card of {base} records no held-out train images (train it with "
                         "--holdout N), so there is no selection set but val")
    for flag, path in (others or {}).items():
        theirs = (checkpoint.read_card(Path(path)).get("selection") or {}).get("holdout_files") or ()
        if set(theirs) != set(names):
            raise ValueError(f"--on holdout: {flag}={path} did not hold out the same train images as {base} "
                             "(train both with the same --holdout and --seed), so it may have trained on them")
    return names


def run(args: argparse.Namespace) -> dict:
    t0 = time.time()
    load_at_start = list(os.getloadavg())
    earlier = read_points(args.at, [*args.strategies, *(n + OWN for n, _ in args.tuned)]) if args.at else None
    weights = Path(args.checkpoint) if args.checkpoint else checkpoint.SHIPPED
    model = checkpoint.load_model(weights)
    spec, data_seed = data.card_data(checkpoint.read_card(weights), args.data)
    root = data.resolve_data_root(args.data_root) if spec == data.labelled.FLOWERS else None
    # a tuned arm that trained on the selection images would be scored on its own training set
    held = held_out_files(weights, {f"--tuned {n}": p for n, p in args.tuned}) if args.on == "holdout" else ()
    sides = args.sides or (RESOLUTION, RESOLUTION + model.region)
    for side in sides:
        check_side(side, "--sides", model.patch)
    if RESOLUTION not in sides:
        raise ValueError(f"--sides {','.join(map(str, sides))} must include {RESOLUTION}: the budgets are shares of "
                         f"the full-token GFLOPs at {RESOLUTION} px")
    cache_path = Path(str(args.json) + ".cache.jsonl")
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    venues = []
    for side in sorted(set(sides)):
        s = load_split(root, args.select_per_class, args.seed, args.workers, args.per_class, spec, data_seed, side,
                       held)
        probe = s.images[torch.as_tensor(s.select[:: max(1, len(s.select) // args.probe)][: args.probe])]
        venues.append(Venue(side, s, Cache(cache_path, fingerprint(weights, s)), probe))
    where = "held-out train images" if held else "val images"
    base = next(v for v in venues if v.side == RESOLUTION)
    split, cache = base.split, base.cache
    full = make("resolution", size=(RESOLUTION, RESOLUTION))
    row = evaluated(cache, model, full, split, "all", args.batch_size)
    full_gflops = float(np.mean(row["gflops"]))
    all_idx = np.arange(len(split.targets))
    full_scores = score(split, all_idx, np.array(row["preds"]))
    arms = {name: Arm(name, model, venues) for name in args.strategies}
    arms.update({name + OWN: tuned_arm(name, path, model, venues, cache_path) for name, path in args.tuned})
    strategies = {}
    for key, arm in tqdm(arms.items(), desc="strategies", unit="strategy"):
        strategies[key] = (at_points(arm.model, arm.name, earlier["strategies"][key], arm.venues, full_gflops,
                                     args.batch_size)
                           if earlier else
                           choose_at_sides(arm.model, arm.name, arm.venues, full_gflops, args.budgets, args.candidates,
                                           args.batch_size))
        best = [f"{p['budget']:.0%}: {100 * p['top1']:.2f}% at {p['side']} px"
                for p in strategies[key] if p.get("settings")]
        tqdm.write(f"{key}: {', '.join(best)}")
    pair_with_adavit(strategies, arms, args.batch_size)
    default = (choose_default(model, venues, full_gflops, args.default_share, args.batch_size, args.default_speedup,
                              args.latency_runs or 10)
               if args.default_share else None)
    if earlier and earlier.get("default", {}).get("settings"):
        was = earlier["default"]
        default = {"max_share": was["max_share"],
                   **at_points(model, "adavit", [{"budget": was["max_share"], **was}], venues, full_gflops,
                               args.batch_size)[0]}
        default.pop("budget")
    report_images = {v.side: v.split.images[torch.as_tensor(v.split.report)] for v in venues}
    chosen = {"full": (full, report_images[RESOLUTION], model),
              **{f"{n}@{p['budget']}": (p["_strategy"], report_images[p["side"]], arms[n].model)
                 for n, pts in strategies.items() for p in pts if p.get("settings")}}
    if default and default.get("settings"):
        chosen["default"] = (default.pop("_strategy"), report_images[default["side"]], model)
    lat = latencies(chosen, args.latency_runs, args.latency_runs_b32) if args.latency_runs else {}
    for n, pts in strategies.items():
        for p in pts:
            p.pop("_strategy", None)
            b1, b32 = lat.get(f"{n}@{p['budget']}", (None, None))
            p["latency_ms_b1"], p["latency_ms_b32"] = b1, b32
    if default and default.get("settings"):
        default["latency_ms_b1"], default["latency_ms_b32"] = lat.get("default", (None, None))
    b1, b32 = lat.get("full", (None, None))
    return {
        "on": args.on, "budgets": earlier["budgets"] if earlier else list(args.budgets),
        **({"at": str(args.at)} if args.at else {}), **({"default": default} if default else {}),
        "full": {"settings": describe(full), "top1": full_scores["top1"], "weighted_f1": full_scores["weighted_f1"],
                 "gflops": full_gflops, "latency_ms_b1": b1, "latency_ms_b32": b32},
        "strategies": strategies,
        "tuned": {name + OWN: {"strategy": name, "checkpoint": str(path), "sha256": sha256(path),
                               "recipe": checkpoint.read_card(path).get("recipe")} for name, path in args.tuned},
        "protocol": {
            "select": f"{len(split.select)} {where}, {args.select_per_class} per class "
                      f"(stratified, seed {args.seed})",
            "report": f"the other {len(split.report)} {where}", "all": f"{len(split.targets)} {where}",
            "tolerance": TOLERANCE, "candidates_per_budget": args.candidates, "probe_images": len(base.probe),
            "sides": sorted(set(sides)), "attention": attention(model.config),
            "gflops": f"mean per image; {CONVENTION}", "resolution": RESOLUTION,
            "latency": f"median ms, batch 1 ({args.latency_runs} rounds) and batch 32 ({args.latency_runs_b32} "
                       f"rounds), all points in alternating rounds, {torch.get_num_threads()} threads",
        },
        **({"holdout_files": list(held)} if held else {}),
        "checkpoint": str(weights), "command": args.command, "wall_time_s": round(time.time() - t0, 1),
        "machine": machine(load_at_start),
    }


def attention(config) -> str:
    """The checkpoint's attention, which every strategy runs (`strategies.base.attention_of`)."""
    local = [i for i, w in enumerate(config.block_windows) if w]
    if not local:
        return "global in every block"
    sides = sorted({w for w in config.block_windows if w})
    return (f"local windows of {', '.join(map(str, sides))} px in blocks {', '.join(map(str, local))} (0-based), "
            "global elsewhere, in every strategy")


def update_card(weights: Path, out: dict) -> None:
    card = checkpoint.read_card(weights)
    keep = ("budgets", "full", "strategies", "tuned", "protocol", "command")
    slim = {k: out[k] for k in keep if k in out}
    slim["strategies"] = {n: [{k: v for k, v in p.items() if k != "candidates"} for p in pts]
                          for n, pts in out["strategies"].items()}
    metrics.write_json(checkpoint.card_path(weights), {**card, "compare": slim})


def set_default(weights: Path, out: dict) -> dict:
    """Make the chosen default the card's `default_settings` (what evaluate, bench, export and the app use)."""
    chosen = out.get("default") or {}
    if not chosen.get("settings"):
        raise ValueError(chosen.get("missing") or "--set-default needs --default-share")
    card = checkpoint.read_card(weights)
    settings = chosen["settings"]["settings"]
    metrics.write_json(checkpoint.card_path(weights), {**card, "default_settings": settings,
                                                       "default_choice": {**chosen, "command": out["command"]}})
    return settings


def ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers such as 224,252, got {text!r}") \
            from None


def names(text: str) -> list[str]:
    out = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in out if x not in STRATEGIES]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown strategies {bad}; choose from {', '.join(STRATEGIES)}")
    return out


def tuned(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=CHECKPOINT such as resolution=runs/lowres/model.safetensors, "
                                         f"got {text!r}")
    if name not in STRATEGIES or name == "adavit":
        others = ", ".join(n for n in STRATEGIES if n != "adavit")
        raise argparse.ArgumentTypeError(f"--tuned takes a strategy other than adavit ({others}), got {name!r}")
    if not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"--tuned {name}: no checkpoint at {path}")
    return name, Path(path)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adavit compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True, help="write the results here (and cache points in <json>.cache.jsonl)")
    p.add_argument("--html", default=None, help="write the plotly chart here")
    p.add_argument("--markdown", default=None, help="write the README table here (default: <json> with .md)")
    p.add_argument("--data", default=None, help="flowers102 or imagefolder:DIR (default: the checkpoint card's data)")
    p.add_argument("--data-root", default=None,
                   help="folder holding flowers-102/ (default: $ADAVIT_DATA or ../shared/data)")
    p.add_argument("--on", choices=("val", "holdout"), default="val",
                   help="val (report), or holdout: the train images the checkpoint's run held out (train --holdout "
                        "N; its card lists them), to choose a recipe by its margin without looking at val")
    p.add_argument("--per-class", type=int, default=None,
                   help="quick check: only N val images per class (the select half takes --select-per-class of them)")
    p.add_argument("--checkpoint", default=None, help=f"weights (default {checkpoint.SHIPPED})")
    p.add_argument("--strategies", type=names, default=list(STRATEGIES), help="comma-separated subset")
    p.add_argument("--tuned", type=tuned, action="append", default=[], metavar="NAME=CHECKPOINT",
                   help="also run strategy NAME on weights fine-tuned for it (e.g. resolution=runs/lowres/"
                        "model.safetensors, trained at low sides with every token); repeatable")
    p.add_argument("--budgets", type=floats, default=list(BUDGETS), help="shares of the full-token GFLOPs")
    p.add_argument("--candidates", type=int, default=3, help="settings evaluated per strategy, budget and side")
    p.add_argument("--sides", type=ints, default=None,
                   help="image sides the strategies may take, comma-separated (default: 224 and one ring of 2x2-patch "
                        "regions more, 252 px for 14 px patches); 224 must be one")
    p.add_argument("--select-per-class", type=int, default=SELECT_PER_CLASS)
    p.add_argument("--seed", type=int, default=SEED, help="seed of the select/report split")
    p.add_argument("--probe", type=int, default=4, help="images each adaptive grid setting is costed on")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--latency-runs", type=int, default=10, help="batch-1 rounds (0: skip latency)")
    p.add_argument("--latency-runs-b32", type=int, default=3, help="batch-32 rounds")
    p.add_argument("--update-card", action="store_true", help='write the results into the card\'s "compare"')
    p.add_argument("--default-share", type=float, default=None,
                   help="also choose a default setting: the best top-k AdaViT setting on the select half costing at "
                        "most this share of the full-token GFLOPs (e.g. 0.333 for 3x fewer)")
    p.add_argument("--default-speedup", type=float, default=None,
                   help="with --default-share: the default must also run at batch 1 at least this many times faster "
                        "than timm's full-token forward (bench's ratio, timed here); the best on the select half "
                        "that does wins (e.g. 2.5)")
    p.add_argument("--at", type=Path, default=None,
                   help="measure at the points an earlier run chose (its --json, or a card it updated, e.g. "
                        "checkpoints/adavit_s14_flowers102.json), searching nothing: compares checkpoints on the same "
                        "settings")
    p.add_argument("--set-default", action="store_true",
                   help="write that default into the card's default_settings (needs --default-share)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = cli.parse(parser(), argv)
    if any(not 0 < b <= 1 for b in args.budgets):
        print(f"error: budgets are shares of the full-token GFLOPs in (0, 1], got {args.budgets}", file=sys.stderr)
        return 2
    if args.on == "holdout" and (args.update_card or args.set_default):
        print("error: --update-card and --set-default store the val comparison in the card; run it without "
              "--on holdout", file=sys.stderr)
        return 2
    if args.default_share is not None and not 0 < args.default_share <= 1:
        print(f"error: --default-share is a share of the full-token GFLOPs in (0, 1], got {args.default_share}",
              file=sys.stderr)
        return 2
    if args.at and (args.default_share is not None or args.set_default):
        print(f"error: --at re-measures the default {args.at} chose (if any); drop --default-share and --set-default",
              file=sys.stderr)
        return 2
    if args.default_speedup is not None and (args.default_share is None or not args.default_speedup > 1):
        print("error: --default-speedup is a batch-1 latency ratio above 1 that the default chosen by --default-share "
              f"must reach; give both (got --default-speedup {args.default_speedup}, --default-share "
              f"{args.default_share})", file=sys.stderr)
        return 2
    if args.set_default and args.default_share is None:
        print("error: --set-default writes the default that --default-share chooses; give --default-share too",
              file=sys.stderr)
        return 2
    try:
        out = run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    metrics.write_report(args.json, out, markdown(out), args.markdown)
    if args.html:
        print(f"wrote {metrics.write_html(figure(out), args.html)}")
    if args.update_card:
        weights = Path(args.checkpoint) if args.checkpoint else checkpoint.SHIPPED
        update_card(weights, out)
        print(f"updated \"compare\" in {checkpoint.card_path(weights)}")
    if args.set_default:
        weights = Path(args.checkpoint) if args.checkpoint else checkpoint.SHIPPED
        try:
            settings = set_default(weights, out)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"set default_settings = {settings} in {checkpoint.card_path(weights)}")
    return 0
