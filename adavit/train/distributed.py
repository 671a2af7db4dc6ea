"""torchrun plumbing: one process per device, DistributedDataParallel, rank 0 logs and saves.

    torchrun --nproc_per_node 4 -m adavit train ...                                  # one machine
    torchrun --nnodes 2 --node_rank R --nproc_per_node 8 --rdzv_backend c10d \\
        --rdzv_endpoint HOST:29500 -m adavit train ...                                 # two machines

Without torchrun (no WORLD_SIZE in the environment) everything here is a no-op and training runs
in one process, on one CPU or GPU, exactly as before.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init(device_name: str) -> tuple[World, torch.device]:
    """The process group (NCCL on CUDA, gloo on CPU) when launched by torchrun, and this rank's device."""
    size = int(os.environ.get("WORLD_SIZE", 1))
    world = World(int(os.environ.get("RANK", 0)), size, int(os.environ.get("LOCAL_RANK", 0)))
    cuda = torch.cuda.is_available() if device_name == "auto" else device_name.startswith("cuda")
    device = torch.device(f"cuda:{world.local_rank}" if cuda and size > 1 else
                          ("cuda" if cuda else "cpu"))
    if cuda:
        torch.cuda.set_device(device)
    if world.distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return world, device


def wrap(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    if not world.distributed:
        return model
    ids = [device.index] if device.type == "cuda" else None
    # the coarse and fine embeddings share weights, but a batch of fine_ratio=1 never runs the coarse
    # path: parameters can sit out a step
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def max_weight_gap(model: nn.Module, world: World) -> float:
    """Largest |w - w on rank 0| over every parameter (0.0 when ranks agree); for --check-sync."""
    if not world.distributed:
        return 0.0
    gap = torch.zeros((), dtype=torch.float64)
    for p in model.parameters():
        ref = p.detach().clone()
        dist.broadcast(ref, 0)
        gap = torch.maximum(gap, (p.detach() - ref).abs().max().double().cpu())
    gap = gap.to(next(model.parameters()).device)
    dist.all_reduce(gap, op=dist.ReduceOp.MAX)
    return float(gap)


def close(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
