"""Evaluate AdaViT on Flowers-102: accuracy, per-class table, confusion matrix, GFLOPs, tokens, latency.

    adavit evaluate --split val [--checkpoint PATH] [--fine-ratio F --keep1 F --keep2 F]
        [--mode topk|sample] [--fuse] [--per-class N | --limit N] [--json PATH] [--html PATH]

Also the library behind the sweep: `evaluate(model, data, settings)`, `EvalResult` and `Collector`.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .. import data
from ..core.config import MODES, Settings
from ..core.model import AdaViT, Prediction
from ..weights import checkpoint
from . import cli, metrics
from .flops import image_gflops
from .flops import summarize as gflops_summary

LATENCY_IMAGES = 30
LATENCY_WARMUP = 3


# ---------------------------------------------------------------- results
@dataclass
class EvalResult:
    settings: Settings
    names: tuple[str, ...]  # class names by target
    targets: np.ndarray  # (N,)
    preds: np.ndarray  # (N,)
    gflops: np.ndarray  # (N,) per image
    tokens: np.ndarray  # (N, 3) tokens each stage ran on, CLS included
    latency_ms_b1: float | None = None  # median batch-1 forward; None when not measured
    scores: dict = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.scores = metrics.classification(self.targets, self.preds, self.names)

    @property
    def n_images(self) -> int:
        return int(len(self.targets))

    @property
    def top1(self) -> float:
        return self.scores["top1"]

    @property
    def weighted_f1(self) -> float:
        return self.scores["weighted_f1"]

    @property
    def per_class(self) -> list[dict]:
        return self.scores["per_class"]

    @property
    def gflops_mean(self) -> float:
        return float(self.gflops.mean()) if len(self.gflops) else 0.0

    @property
    def tokens_per_stage(self) -> list[float]:
        return [float(t) for t in self.tokens.mean(0)] if len(self.tokens) else []

    def confusion(self) -> np.ndarray:
        return metrics.confusion(self.targets, self.preds, len(self.names))

    def summary(self) -> dict:
        """The headline numbers (one sweep point): no per-class table, no matrix."""
        return {
            **self.settings.to_dict(),
            "top1": self.top1, "weighted_f1": self.weighted_f1, "gflops_mean": self.gflops_mean,
            "latency_ms_b1": self.latency_ms_b1, "tokens_per_stage": self.tokens_per_stage,
            "n_images": self.n_images,
        }

    def to_dict(self) -> dict:
        return {
            "n_images": self.n_images, "settings": self.settings.to_dict(),
            "top1": self.top1, "weighted_f1": self.weighted_f1,
            "gflops_mean": self.gflops_mean, "gflops": gflops_summary(self.gflops),
            "tokens_per_stage": self.tokens_per_stage, "latency_ms_b1": self.latency_ms_b1,
            "per_class": self.per_class,
            # the full matrix is in the --html heatmap; 102 x 102 numbers would drown the JSON
            "top_confusions": metrics.top_confusions(self.confusion(), self.names),
        }


class Collector:
    """Accumulates per-batch predictions into an EvalResult."""

    def __init__(self, model: AdaViT):
        self.model = model
        self.targets: list[np.ndarray] = []
        self.preds: list[np.ndarray] = []
        self.gflops: list[np.ndarray] = []
        self.tokens: list[np.ndarray] = []

    def add(self, pred: Prediction, targets: torch.Tensor) -> None:
        self.targets.append(targets.cpu().numpy())
        self.preds.append(pred.logits.argmax(1).cpu().numpy())
        self.gflops.append(image_gflops(self.model, pred))
        self.tokens.append(pred.tokens_per_stage.cpu().numpy())

    def result(self, settings: Settings, names: Sequence[str], latency_ms: float | None) -> EvalResult:
        def cat(xs: list[np.ndarray], empty: tuple[int, ...]) -> np.ndarray:
            return np.concatenate(xs) if xs else np.zeros(empty)

        return EvalResult(settings, tuple(names), cat(self.targets, (0,)).astype(int),
                          cat(self.preds, (0,)).astype(int), cat(self.gflops, (0,)), cat(self.tokens, (0, 3)),
                          latency_ms)


def device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def class_names_of(model: AdaViT, root: str | Path | None = None) -> tuple[str, ...]:
    """The checkpoint's own class names; else the data's cat_to_name.json (when it fits); else numbers."""
    names = model.config.class_names
    if not names and root is not None and model.config.num_classes == data.NUM_CLASSES:
        names = data.class_names(root)
    return tuple(names) if names else tuple(f"class {i + 1}" for i in range(model.config.num_classes))


def check_classes(model: AdaViT, ds: Dataset) -> None:
    """A checkpoint evaluated on data with other classes gives a number that means nothing: refuse."""
    base = ds.dataset if isinstance(ds, torch.utils.data.Subset) else ds
    targets = getattr(base, "targets", None) or list(getattr(base, "_labels", []))
    if targets and max(targets) >= model.config.num_classes:
        raise ValueError(f"the data has labels up to {max(targets)}, the checkpoint only {model.config.num_classes} "
                         "classes; pass the --data it was trained on")


def loader_for(dataset: Dataset, batch_size: int, workers: int = 0) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)


def batch1_latency(model: AdaViT, images: Sequence[torch.Tensor], settings: Settings,
                   warmup: int = LATENCY_WARMUP) -> float:
    """Median milliseconds of one full `model(image, settings)` at batch 1 (a single image each run)."""
    device = device_of(model)
    inputs = [x.unsqueeze(0).to(device) for x in images]
    with torch.inference_mode():
        return metrics.median_ms(lambda x: model(x, settings), inputs, warmup=warmup)


def evaluate(
    model: AdaViT,
    dataset: DataLoader | Dataset,
    settings: Settings | None = None,
    *,
    batch_size: int = 32,
    names: Sequence[str] | None = None,
    latency_images: int = LATENCY_IMAGES,
    progress: bool = True,
) -> EvalResult:
    """Every image of `dataset` at `settings` (default Settings()), plus batch-1 latency over its first
    `latency_images` images."""
    settings = settings or Settings()
    loader = dataset if isinstance(dataset, DataLoader) else loader_for(dataset, batch_size)
    device = device_of(model)
    col = Collector(model)
    bar = tqdm(total=len(loader.dataset), desc="evaluate", unit="img", disable=not progress)
    with torch.inference_mode(), bar:
        for images, targets in loader:
            col.add(model(images.to(device), settings), targets)
            bar.update(len(targets))
    latency = None
    if latency_images > 0:
        n = min(latency_images, len(loader.dataset))
        latency = batch1_latency(model, [loader.dataset[i][0] for i in range(n)], settings)
    return col.result(settings, names or class_names_of(model), latency)


# ---------------------------------------------------------------- CLI helpers (shared with sweep)
def checkpoint_card(path: str | None) -> tuple[Path, dict]:
    """The weights' path (default: the shipped checkpoint) and its card ({} when it has none)."""
    weights = Path(path) if path else checkpoint.SHIPPED
    if not weights.exists():
        raise FileNotFoundError(f"no checkpoint at {weights}; pass --checkpoint PATH or train one with "
                                "`python -m adavit train`")
    return weights, checkpoint.read_card(weights)


def settings_from(card: dict, **overrides) -> Settings:
    """The card's default_settings (else Settings()), with every override that is not None applied."""
    base = card.get("default_settings")
    settings = Settings(**base) if base else Settings()
    return dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=None, help=f"weights (default {checkpoint.SHIPPED})")
    p.add_argument("--data", default=None,
                   help="flowers102 or imagefolder:DIR (default: the data the checkpoint card names, else "
                        "flowers102; an image folder without val/ is re-split with the card's seed)")
    p.add_argument("--data-root", default=None,
                   help="folder holding flowers-102/ (default: $ADAVIT_DATA or ../shared/data)")
    p.add_argument("--download", action="store_true",
                   help="fetch Flowers-102 with torchvision when it is missing (needs internet; default place: "
                        "~/.cache/adavit/data)")
    p.add_argument("--resolution", type=int, default=None, help="input side in px (default: card's, else 224)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    sub = p.add_argument_group("subset (quick checks; report full-split numbers)")
    sub.add_argument("--per-class", type=int, default=None, help="N images of every class (stratified, fixed)")
    sub.add_argument("--limit", type=int, default=None, help="at most N images (after --per-class)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--html", default=None, help="write the plotly chart here")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adavit evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--split", choices=("val", "test"), default="val",
                   help="val (default); test is held out: report it once, never tune on it")
    add_model_args(p)
    s = p.add_argument_group("settings (default: the checkpoint card's default_settings, else Settings())")
    s.add_argument("--fine-ratio", type=float, default=None)
    s.add_argument("--keep1", type=float, default=None)
    s.add_argument("--keep2", type=float, default=None)
    s.add_argument("--mode", choices=MODES, default=None)
    s.add_argument("--fuse", action=argparse.BooleanOptionalAction, default=None)
    s.add_argument("--full", action="store_true", help="every token (the plain ViT); ignores the four above")
    p.add_argument("--latency-images", type=int, default=LATENCY_IMAGES,
                   help=f"batch-1 latency: median over this many images after {LATENCY_WARMUP} warm-up runs (0: skip)")
    p.add_argument("--update-card", action="store_true",
                   help='record the headline numbers in the checkpoint card\'s "val_metrics" (full split only)')
    r = p.add_argument_group("runtime (adavit.measure.onnx_eval)")
    r.add_argument("--runtime", choices=("torch", "onnxruntime"), default="torch")
    r.add_argument("--onnx", default=None, help="an `adavit export` file, run in ONNX Runtime at its own setting "
                   "(default with --runtime onnxruntime: the checkpoint exported for this run)")
    r.add_argument("--precision", choices=("fp32", "int8"), default="fp32",
                   help="precision of that export (int8: dynamic quantization); ignored with --onnx")
    return p


def describe(settings: Settings) -> str:
    return (f"fine_ratio={settings.fine_ratio} keep1={settings.keep1} keep2={settings.keep2} "
            f"mode={settings.mode} fuse={settings.fuse} resolution={settings.resolution}")


def report(res: EvalResult, split: str, latency_images: int) -> str:
    g = gflops_summary(res.gflops)
    extra = ", ".join(f"{k} {v:.3g}" for k, v in g.items() if k != "mean" and isinstance(v, (int, float)))
    tokens = " / ".join(f"{t:.1f}" for t in res.tokens_per_stage)
    latency = ("not measured" if res.latency_ms_b1 is None else
               f"{res.latency_ms_b1:.1f} ms (median of {min(latency_images, res.n_images)} images, "
               f"{torch.get_num_threads()} threads)")
    return "\n".join([
        metrics.per_class_table(res.per_class, res.top1, res.weighted_f1), "",
        f"Flowers-102 {split}, {res.n_images} images, {describe(res.settings)}",
        f"top-1        {100 * res.top1:.2f}%",
        f"weighted F1  {100 * res.weighted_f1:.2f}%",
        f"GFLOPs       mean {res.gflops_mean:.3f} ({extra}){'; ' + g['convention'] if 'convention' in g else ''}",
        f"tokens/stage {tokens} (CLS included)",
        f"latency b=1  {latency}",
        "most confused " + ("; ".join(f"{c['true']} -> {c['predicted']} ({c['count']})"
                                      for c in metrics.top_confusions(res.confusion(), res.names, 5)) or "none"),
    ])


CARD_KEYS = ("top1", "weighted_f1", "gflops_mean", "tokens_per_stage", "latency_ms_b1", "n_images", "settings")


def record_in_card(weights: Path, name: str, out: dict, split: str) -> None:
    """Keep the card's other entries; a crash mid-write leaves the old card (atomic write)."""
    card = checkpoint.read_card(weights)
    entry = {k: out[k] for k in CARD_KEYS if k in out}
    s = out["settings"]
    entry["command"] = "python -m adavit evaluate" + (
        " --full" if name == "full" else "" if name == "default" else
        f" --fine-ratio {s['fine_ratio']} --keep1 {s['keep1']} --keep2 {s['keep2']} --mode {s['mode']}"
        + (" --fuse" if s["fuse"] else ""))
    key = f"{split}_metrics"
    metrics.write_json(checkpoint.card_path(weights), {**card, key: {**card.get(key, {}), name: entry}})


def main(argv: Sequence[str] | None = None) -> int:
    args = cli.parse(parser(), argv)
    if args.split == "test":
        print("warning: the test split is held out; report it once and never tune settings on it "
              "(tune on --split val)", file=sys.stderr)
    try:
        weights, card = checkpoint_card(args.checkpoint)  # settings and data fail fast, before the model loads
        if args.full:
            settings = Settings.full(args.resolution or settings_from(card).resolution)
        else:
            settings = settings_from(card, fine_ratio=args.fine_ratio, keep1=args.keep1, keep2=args.keep2,
                                     mode=args.mode, fuse=args.fuse, resolution=args.resolution)
        onnx = args.runtime == "onnxruntime" or args.onnx is not None
        flags = (args.fine_ratio, args.keep1, args.keep2, args.mode, args.fuse, args.resolution)
        if args.onnx and not args.full and all(v is None for v in flags):
            from .onnx_eval import settings_of

            settings = settings_of(args.onnx)  # the file fixes its setting
        ds, root = data.eval_dataset(args.data_root, args.split, settings.resolution, args.per_class, args.limit,
                                     args.download, *data.card_data(card, args.data))
        model = checkpoint.load_model(weights)
        check_classes(model, ds)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    loader = loader_for(ds, args.batch_size, args.workers)
    names = class_names_of(model, root)
    runtime = {"runtime": "torch", "precision": "fp32"}
    if onnx:
        from .onnx_eval import evaluate_onnx

        try:
            res, runtime = evaluate_onnx(model, loader, settings, names, onnx_path=args.onnx,
                                         precision=args.precision, latency_images=args.latency_images)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"runtime: {runtime}")
    else:
        res = evaluate(model, loader, settings, names=names, latency_images=args.latency_images)
    print(report(res, args.split, args.latency_images))
    out = {"checkpoint": str(weights), "split": args.split, "data_root": str(root),
           "subset": {"per_class": args.per_class, "limit": args.limit},
           "latency": {"images": min(args.latency_images, res.n_images), "warmup": LATENCY_WARMUP,
                       "threads": torch.get_num_threads(), "device": str(device_of(model))},
           **runtime, **res.to_dict()}
    if args.json:
        print(f"wrote {metrics.write_json(args.json, out)}")
    if args.update_card:
        if onnx:
            print("not updating the card: it records the PyTorch model's metrics", file=sys.stderr)
        elif args.per_class or args.limit:
            print("not updating the card: its metrics must come from the whole split", file=sys.stderr)
        else:
            # only the card's own default setting may be recorded as "default"; other settings under their values
            name = "full" if args.full else "default" if settings == settings_from(card) else describe(settings)
            record_in_card(weights, name, out, args.split)
    if args.html:
        dataset = (card.get("dataset") or {}).get("name", "Flowers-102")
        title = f"AdaViT confusion matrix, {dataset} {args.split} ({res.n_images} images): {describe(settings)}"
        print(f"wrote {metrics.write_html(metrics.confusion_figure(res.confusion(), res.names, title), args.html)}")
    return 0
