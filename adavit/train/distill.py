"""Self-distillation: the full-token path of the same network teaches its reduced paths.

One checkpoint serves every setting, and its full-token output is its best one (96.7% against 93.1%
at the default on Flowers-102 val). Using that output as a soft target for the reduced paths is the
sandwich rule of slimmable / once-for-all training and DynamicViT's distillation, without a second
network: the teacher is this network with every token, run under no_grad (or, with `sandwich`, with
gradients and its own cross-entropy, so the widest path keeps improving too).

A teacher forward costs about a third of a full-token training step; `every` runs it on every k-th
step only, which is how the training-time criterion (reduced training at least 30% cheaper per
epoch than full-token training, `adavit traintime`) is kept. With several training sides, `top` lets
the teacher see the crop at the largest side while the student sees it resized down.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Distill:
    weight: float = 0.0  # share of the reduced path's loss that is the KL to the teacher (0 = off)
    temperature: float = 1.0
    every: int = 1  # the teacher runs on every k-th optimizer step
    sandwich: bool = False  # the full path trains too (its cross-entropy), rather than under no_grad
    # the teacher sees the batch at the largest training side, before it is resized down: a 224 px
    # full-token teacher for a 140 px student is stronger than the same side's (FixRes' train/test gap)
    top: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"--distill must be in [0, 1] (the share of the loss), got {self.weight}")
        if self.temperature <= 0:
            raise ValueError(f"--distill-temp must be positive, got {self.temperature}")
        if self.every < 1:
            raise ValueError(f"--distill-every must be at least 1, got {self.every}")

    def due(self, step: int) -> bool:
        return self.weight > 0 and step % self.every == 0


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened logits, scaled by T^2 (Hinton et al.)."""
    t = temperature
    return F.kl_div(F.log_softmax(student.float() / t, -1), F.log_softmax(teacher.float() / t, -1),
                    log_target=True, reduction="batchmean") * t * t
