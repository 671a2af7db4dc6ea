"""An exported AdaViT in ONNX Runtime: the same call shape as the PyTorch model, numpy in the middle."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.config import Settings
from .graph import INPUT, OUTPUTS, read_metadata


@dataclass
class OrtPrediction:
    """What the graph returns (see graph.OUTPUTS), as torch tensors so callers treat both runtimes alike."""

    logits: torch.Tensor  # (B, C)
    tokens_per_stage: torch.Tensor  # (B, 3) CLS included
    boxes: torch.Tensor  # (B, T, 4) stage-0 token boxes in input pixels
    kept: tuple[torch.Tensor, ...]  # per sampler (B, K_s): stage-0 index of each kept token, -2 = fused


def cpu_session(path: str | Path, threads: int | None = None, spin: bool = False):
    """An ONNX Runtime CPU session with `threads` intra-op threads (default: torch's count, so both runtimes
    get the same cores). Idle threads sleep instead of spinning (`spin=False`): on a shared machine, or when
    ONNX Runtime alternates with PyTorch in one process, spinning threads steal the cores the other work
    needs (2 busy cores: 110 -> 39 ms per AdaViT forward)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no ONNX model at {path}; write one with `python -m adavit export --onnx {path}`")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class OrtModel:
    """`OrtModel(path)(images)` runs an `adavit export` file on the CPU (see `cpu_session`)."""

    def __init__(self, path: str | Path, threads: int | None = None, spin: bool = False):
        self.path = Path(path)
        self.session = cpu_session(self.path, threads, spin)
        self.metadata = read_metadata(self.path)
        names = tuple(o.name for o in self.session.get_outputs())
        if names != OUTPUTS or "settings" not in self.metadata:
            raise ValueError(f"{path} is not an `adavit export` file: outputs {names}, expected {OUTPUTS}")

    @property
    def settings(self) -> Settings:
        return Settings(**self.metadata["settings"])

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        """The raw outputs, in graph.OUTPUTS order (the fastest call: no conversions)."""
        return self.session.run(None, {INPUT: images})

    def __call__(self, images: torch.Tensor) -> OrtPrediction:
        side = self.settings.resolution
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, side, side):
            raise ValueError(f"this ONNX model was exported for images of shape (B, 3, {side}, {side}), "
                             f"got {tuple(images.shape)}; re-export with --resolution {images.shape[-1]}")
        logits, tokens, boxes, *kept = (torch.from_numpy(o) for o in self.run(images.float().contiguous().numpy()))
        return OrtPrediction(logits, tokens, boxes, tuple(kept))
