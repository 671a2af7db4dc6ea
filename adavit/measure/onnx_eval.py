"""Accuracy of an exported model: `adavit evaluate --runtime onnxruntime [--onnx PATH | --precision int8]`.

The ONNX graph gives logits, tokens per stage, token boxes and kept indices; GFLOPs per image follow from
them with the same closed form as the PyTorch evaluation (flops.adavit_flops), so the two reports line up.
"""
from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..core.config import Settings
from ..core.model import AdaViT
from ..core.sampler import FUSED
from ..export.graph import export_onnx, read_metadata
from ..export.quantize import quantize_int8
from ..export.runtime import OrtModel, OrtPrediction
from . import flops, metrics
from .evaluate import LATENCY_WARMUP, Collector, EvalResult


def image_gflops(arch: flops.Arch, pred: OrtPrediction, size: tuple[int, int]) -> np.ndarray:
    """(B,) GFLOPs per image from the graph's outputs (fine tokens are one patch wide, coarse two)."""
    width = (pred.boxes[..., 2] - pred.boxes[..., 0]).numpy()
    fused = [(k == FUSED).any(1).numpy() for k in pred.kept]
    return np.array([
        flops.adavit_flops(arch, size, pred.tokens_per_stage[b].tolist(), fine=bool((width[b] == arch.patch).any()),
                           coarse=bool((width[b] == 2 * arch.patch).any()), fused=[bool(f[b]) for f in fused]) / 1e9
        for b in range(len(width))
    ])


def settings_of(path: str | Path) -> Settings:
    """The setting an `adavit export` file was written at."""
    if not Path(path).exists():
        raise FileNotFoundError(f"no ONNX model at {path}; write one with `python -m adavit export --onnx {path}`")
    meta = read_metadata(path)
    if "settings" not in meta:
        raise ValueError(f"{path} is not an `adavit export` file (no adavit metadata)")
    return Settings(**meta["settings"])


def open_onnx(model: AdaViT, settings: Settings, path: str | None, precision: str, folder: Path) -> OrtModel:
    """The given export (its own settings must be the ones asked for), else `model` exported into `folder`."""
    if path:
        onnx = OrtModel(path)
        if onnx.settings != settings:
            raise ValueError(f"{path} was exported at {onnx.settings}, not {settings}; drop the setting flags "
                             "to use the file's, or export again with `python -m adavit export`")
        return onnx
    fp32 = export_onnx(model, folder / "adavit.onnx", settings).path
    return OrtModel(fp32 if precision == "fp32" else quantize_int8(fp32, folder / "adavit.int8.onnx"))


def evaluate_onnx(model: AdaViT, loader: DataLoader, settings: Settings, names: Sequence[str], *,
                  onnx_path: str | None = None, precision: str = "fp32", latency_images: int = 30,
                  progress: bool = True) -> tuple[EvalResult, dict]:
    """Every image of `loader` through ONNX Runtime; returns the result and what ran (file, precision)."""
    arch = flops.Arch.of(model)
    size = (settings.resolution, settings.resolution)
    col = Collector(model)
    with tempfile.TemporaryDirectory() as tmp:
        onnx = open_onnx(model, settings, onnx_path, precision, Path(tmp))
        ran = {"runtime": "onnxruntime", "onnx": str(onnx_path or "exported for this run"),
               "precision": onnx.metadata.get("precision", precision)}
        with tqdm(total=len(loader.dataset), desc="evaluate (onnxruntime)", unit="img", disable=not progress) as bar:
            for images, targets in loader:
                pred = onnx(images)
                col.targets.append(targets.numpy())
                col.preds.append(pred.logits.argmax(1).numpy())
                col.gflops.append(image_gflops(arch, pred, size))
                col.tokens.append(pred.tokens_per_stage.numpy())
                bar.update(len(targets))
        latency = None
        n = min(latency_images, len(loader.dataset))
        if n > 0:
            inputs = [loader.dataset[i][0][None] for i in range(n)]
            latency = metrics.median_ms(lambda x: onnx.run(x.numpy()), inputs, warmup=LATENCY_WARMUP)
    return col.result(settings, names, latency), ran
