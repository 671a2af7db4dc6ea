"""Out-of-distribution score in feature space: Mahalanobis distance to the nearest class mean.

Lee et al. (2018): class means and one shared covariance of the train split's head inputs (the
final-norm CLS token); an image's score is its squared distance to the nearest mean, measured in
that covariance. Softmax confidence cannot do this job: after label smoothing an unusual flower
photo and a cat get similar top-1 probabilities, while their features lie far apart. The
threshold is the score that a chosen share of val images pass (`calibrate`).

The statistics are a small safetensors file beside the checkpoint (no pickle); its metadata
holds the threshold, the dataset's name and how they were fitted, and the card names the file.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

PASS_RATE = 0.95  # share of val images of the training distribution that must pass


@dataclass(frozen=True)
class OODScore:
    """One image's verdict: in distribution when score <= threshold; the rest words the hint."""

    score: float
    threshold: float
    dataset: str = ""
    num_classes: int = 0
    pass_rate: float | None = None  # share of the calibration split that passes

    @property
    def in_distribution(self) -> bool:
        return self.score <= self.threshold

    def to_json(self) -> dict:
        return {"score": round(self.score, 3), "threshold": round(self.threshold, 3),
                "in_distribution": self.in_distribution}


@dataclass(frozen=True)
class OODStats:
    """Class means and the whitening of their shared covariance; `score` is the squared distance."""

    means: torch.Tensor  # (C, D)
    whiten: torch.Tensor  # (D, D), whiten @ whiten.T = inverse of the shared covariance
    threshold: float = math.inf
    dataset: str = ""  # e.g. "Flowers-102": the hint names it
    info: dict = field(default_factory=dict)  # how it was fitted and calibrated (JSON-able)

    @property
    def num_classes(self) -> int:
        return int(self.means.shape[0])

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B,) squared Mahalanobis distance to the nearest class mean (float64 for stable ranks)."""
        if features.dim() != 2 or features.shape[1] != self.means.shape[1]:
            raise ValueError(f"expected features of shape (B, {self.means.shape[1]}), got {tuple(features.shape)}")
        w = self.whiten.to(features.device, torch.float64)
        z = features.double() @ w
        m = self.means.to(features.device, torch.float64) @ w
        return torch.cdist(z, m).pow(2).min(1).values

    def verdicts(self, features: torch.Tensor) -> list[OODScore]:
        rate = self.info.get("pass_rate")
        return [OODScore(float(s), self.threshold, self.dataset, self.num_classes, rate) for s in self.score(features)]

    def with_threshold(self, threshold: float, **info) -> OODStats:
        return OODStats(self.means, self.whiten, float(threshold), self.dataset, {**self.info, **info})

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        meta = {"threshold": repr(self.threshold), "dataset": self.dataset, "info": json.dumps(self.info)}
        tensors = {"means": self.means.float().contiguous(), "whiten": self.whiten.float().contiguous()}
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> OODStats:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if "threshold" not in meta:
            raise ValueError(f"{path} holds no OOD statistics (no threshold in its metadata); "
                             "fit them with `python -m adavit ood`")
        t = load_file(str(path))
        return cls(t["means"], t["whiten"], float(meta["threshold"]), meta.get("dataset", ""),
                   json.loads(meta.get("info", "{}")))


def fit(features: torch.Tensor, labels: torch.Tensor, dataset: str = "", shrinkage: float | None = None) -> OODStats:
    """Class means + one shared covariance of the class-centred features.

    The covariance is shrunk towards a scaled identity (Ledoit-Wolf's amount unless `shrinkage` is
    given): with ten images per class, 918 degrees of freedom for 384 dimensions, the plain estimate's
    smallest eigenvalues are noise and would dominate the distance.
    """
    from sklearn.covariance import ledoit_wolf, shrunk_covariance

    x = features.double().cpu()
    y = torch.as_tensor(labels).long().cpu()
    if x.dim() != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"features (N, D) and labels (N,) expected, got {tuple(x.shape)} and {tuple(y.shape)}")
    classes = torch.unique(y)
    if len(classes) < 1 or int(classes.min()) < 0 or len(classes) != int(classes.max()) + 1:
        raise ValueError(f"labels must cover 0..C-1 with every class present; got classes {classes.tolist()[:10]}...")
    means = torch.stack([x[y == c].mean(0) for c in classes])
    centred = (x - means[y]).numpy()
    if shrinkage is None:
        cov, shrinkage = ledoit_wolf(centred, assume_centered=True)
    else:
        cov = shrunk_covariance(centred.T @ centred / len(centred), shrinkage)
    # inverse = L L^T (Cholesky of the precision): z = x @ L whitens
    whiten = torch.linalg.cholesky(torch.linalg.inv(torch.from_numpy(np.asarray(cov))))
    return OODStats(means.float(), whiten.float(), math.inf, dataset,
                    {"method": "mahalanobis, nearest class mean, shared covariance", "n_fit": int(len(x)),
                     "shrinkage": float(shrinkage)})


def calibrate(scores: torch.Tensor | np.ndarray, pass_rate: float = PASS_RATE) -> float:
    """The threshold that exactly ceil(pass_rate * n) of these scores pass (score <= threshold).

    It lies halfway between the last passing and the first failing score, so float noise between the
    calibration run and the app does not flip an image at the boundary. Ties there pass together.
    """
    s = np.sort(np.asarray(scores, np.float64).ravel())
    if not 0 < pass_rate <= 1 or len(s) == 0:
        raise ValueError(f"pass_rate must be in (0, 1] and scores non-empty; got {pass_rate} and {len(s)} scores")
    k = math.ceil(pass_rate * len(s) - 1e-9)
    return float(s[-1] * (1 + 1e-9) if k >= len(s) else (s[k - 1] + s[k]) / 2)


def auroc(in_scores, out_scores) -> float:
    """How well the score ranks out-of-distribution images above in-distribution ones (1 = perfectly)."""
    from sklearn.metrics import roc_auc_score

    a, b = np.asarray(in_scores, np.float64).ravel(), np.asarray(out_scores, np.float64).ravel()
    return float(roc_auc_score(np.r_[np.zeros(len(a)), np.ones(len(b))], np.r_[a, b]))


def stats_path(weights: str | Path) -> Path:
    """Where a checkpoint's statistics live: beside it, `NAME.ood.safetensors`."""
    weights = Path(weights)
    return weights.with_name(weights.stem + ".ood.safetensors")


def for_checkpoint(weights: str | Path, card: dict) -> OODStats | None:
    """The statistics the card names, or None (no entry, or the file is missing: no OOD check then)."""
    entry = card.get("ood") or {}
    path = Path(weights).with_name(entry["file"]) if entry.get("file") else None
    return OODStats.load(path) if path is not None and path.exists() else None
