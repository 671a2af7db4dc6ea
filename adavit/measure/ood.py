"""`adavit ood`: fit the out-of-distribution statistics if needed, then measure them.

    python -m adavit ood [--checkpoint PATH] [--data-root DIR] [--refit] [--json PATH]

Fits class means and a shared covariance of the head's input on the train split (`mahalanobis.fit`),
sets the threshold so that 95% of val images pass, and writes them beside the checkpoint, named in
its card (the 44 MB weights file is not rewritten). Then it reports the val pass rate and the AUROC
of val flowers against photos shipped in PyPI wheels and synthetic images (`data.nonflowers`), plus
the verdict on every example photo of the app. Every image goes through the app's own path
(`load_image` + `prepare`) at the card's default setting, so the numbers are what the app shows.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .. import data
from ..core.config import Settings
from ..core.model import AdaViT
from ..data import nonflowers
from ..weights import checkpoint
from . import cli, metrics
from .evaluate import checkpoint_card, settings_from
from .mahalanobis import PASS_RATE, OODStats, auroc, calibrate, fit, for_checkpoint, stats_path

EXAMPLES = checkpoint.REPO / "assets" / "examples"
DATASET = "Flowers-102"


def features(model: AdaViT, images: Sequence, settings: Settings, batch: int = 32, desc: str = "") -> torch.Tensor:
    """(N, D) head inputs of paths or PIL images, decoded and cropped as the app does."""
    out = []
    for i in tqdm(range(0, len(images), batch), desc=desc, leave=False, disable=not desc):
        x = torch.cat([data.prepare(data.load_image(im).image, settings.resolution).tensor
                       for im in images[i:i + batch]])
        with torch.inference_mode():
            out.append(model(x, settings).features.float())
    return torch.cat(out)


def split_files(root: Path, split: str) -> tuple[list[str], torch.Tensor]:
    ds = data.flowers(root, split)
    return [str(f) for f in ds._image_files], torch.tensor(ds._labels)


def fit_and_save(model: AdaViT, weights: Path, card: dict, root: Path, settings: Settings,
                 val: torch.Tensor) -> OODStats:
    files, labels = split_files(root, "train")
    stats = fit(features(model, files, settings, desc="train features"), labels, DATASET)
    val_scores = stats.score(val)
    stats = stats.with_threshold(calibrate(val_scores, PASS_RATE), fit_split="train", calibration_split="val",
                                 pass_rate=PASS_RATE, settings=settings.to_dict(),
                                 feature="final-norm CLS token (the head's input)")
    path = stats.save(stats_path(weights))
    entry = {"file": path.name, "method": stats.info["method"], "dataset": DATASET,
             "threshold": stats.threshold, "fit_split": "train", "calibration_split": "val",
             "pass_rate_target": PASS_RATE, "settings": settings.to_dict(), "command": "python -m adavit ood"}
    metrics.write_json(checkpoint.card_path(weights), {**checkpoint.read_card(weights), "ood": entry})
    return stats


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adavit ood", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help=f"weights (default {checkpoint.SHIPPED})")
    p.add_argument("--data-root", default=None, help="folder holding flowers-102/ (default: $ADAVIT_DATA or "
                   "../shared/data)")
    p.add_argument("--refit", action="store_true", help="fit and calibrate again even when the card has statistics")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", default=None, help="write the results here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = cli.parse(parser(), argv)
    photos, missing = nonflowers.installed_photos()
    try:
        weights, card = checkpoint_card(args.checkpoint)
        root = data.resolve_data_root(args.data_root)
        val_files, _ = split_files(root, "val")
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if missing:
        print(f"note: not installed, their photos are left out: {', '.join(missing)} "
              "(pip install -r requirements-test.txt)", file=sys.stderr)
    stats = None if args.refit else for_checkpoint(weights, card)
    calibrated = (stats.info.get("settings") if stats is not None else None) or None
    # the statistics score features of the setting they were fitted at (as the app does), which may not be
    # the card's default any more; --refit fits them at the default
    settings = Settings(**calibrated) if calibrated else settings_from(card)
    model = checkpoint.load_model(weights)
    val = features(model, val_files, settings, desc="val features")
    fitted = stats is None
    if fitted:
        stats = fit_and_save(model, weights, card, root, settings, val)
    synthetic = nonflowers.synthetic()
    ood_images: dict[str, Path | Image.Image] = {**photos, **synthetic}
    ood_scores = stats.score(features(model, list(ood_images.values()), settings, desc="non-flower features"))
    example_files = sorted(EXAMPLES.glob("*.jpg"))
    example_scores = stats.score(features(model, example_files, settings))
    val_scores = stats.score(val).numpy()
    ood_np = ood_scores.numpy()
    is_photo = np.array([not n.startswith("synthetic:") for n in ood_images])
    out = {
        "checkpoint": str(weights), "statistics": str(stats_path(weights)), "fitted_now": fitted,
        "method": stats.info.get("method"), "dataset": stats.dataset, "settings": settings.to_dict(),
        "threshold": stats.threshold,
        "auroc": auroc(val_scores, ood_np),
        "auroc_photos": auroc(val_scores, ood_np[is_photo]),
        "auroc_synthetic": auroc(val_scores, ood_np[~is_photo]),
        "val_pass_rate": float((val_scores <= stats.threshold).mean()), "n_val": len(val_scores),
        "ood_pass_rate": float((ood_np <= stats.threshold).mean()), "n_ood": len(ood_np),
        "n_ood_photos": int(is_photo.sum()), "missing_packages": missing,
        "examples": {f.name: bool(s <= stats.threshold) for f, s in zip(example_files, example_scores.tolist())},
        "example_scores": {f.name: round(float(s), 3) for f, s in zip(example_files, example_scores.tolist())},
        "ood_images": [{"name": n, "score": round(float(s), 3), "in_distribution": bool(s <= stats.threshold),
                        "origin": next((p.origin for p in nonflowers.PHOTOS if p.name == n), "synthetic, seed 0")}
                       for n, s in zip(ood_images, ood_np.tolist())],
        "val_score_quantiles": {q: float(np.quantile(val_scores, float(q))) for q in ("0.5", "0.9", "0.95", "0.99")},
    }
    passed = [d["name"] for d in out["ood_images"] if d["in_distribution"]]
    print(f"{'fitted and saved' if fitted else 'loaded'} {out['statistics']} ({out['method']}; threshold "
          f"{stats.threshold:.2f}, calibrated so {100 * PASS_RATE:.0f}% of val pass)")
    print(f"val flowers pass     {100 * out['val_pass_rate']:.2f}% of {out['n_val']}")
    print(f"non-flowers pass     {100 * out['ood_pass_rate']:.2f}% of {out['n_ood']} "
          f"({out['n_ood_photos']} photos from wheels, {len(synthetic)} synthetic)" + (f": {passed}" if passed else ""))
    print(f"AUROC                {out['auroc']:.4f} (photos only {out['auroc_photos']:.4f}, synthetic only "
          f"{out['auroc_synthetic']:.4f})")
    for name, ok in out["examples"].items():
        print(f"example {name:<14} {'in distribution' if ok else 'flagged: not one of the classes'} "
              f"(score {out['example_scores'][name]:.1f})")
    card = checkpoint.read_card(weights)
    if card.get("ood", {}).get("file") == stats_path(weights).name:  # the measured numbers beside the statistics
        measured = {k: out[k] for k in ("auroc", "auroc_photos", "val_pass_rate", "n_val", "ood_pass_rate", "n_ood",
                                        "examples")}
        metrics.write_json(checkpoint.card_path(weights), {**card, "ood": {**card["ood"], "measured": measured}})
    if args.json:
        print(f"wrote {metrics.write_json(args.json, out)}")
    return 0
