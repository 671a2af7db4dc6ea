"""Which network the app runs, and a plain sentence saying so.

Default: the shipped Flowers-102 checkpoint. Before it exists: the pretrained backbone with an
untrained head (`checkpoint.from_backbone`), else random weights; the UI says which, because the
predictions of the last two mean nothing. Other timm ViTs can be loaded by name through the
plug-in API with pretrained hub weights; offline that fails with a message and the app keeps its model.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlparse

from .. import data
from ..core.config import AdaViTConfig, Settings
from ..core.model import AdaViT
from ..measure.latency import optimize_for_cpu
from ..measure.mahalanobis import OODStats, for_checkpoint
from ..weights import checkpoint
from .gpu import device

HUB = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
TIMM_SUGGESTIONS = ("deit_small_patch16_224", "deit_tiny_patch16_224", "vit_small_patch16_224.augreg_in21k_ft_in1k")


@dataclass
class AppModel:
    model: AdaViT
    class_names: tuple[str, ...]
    weights: str  # one sentence for the UI: what is loaded and what its predictions are worth
    trained: bool  # predictions mean something
    card: dict = field(default_factory=dict)  # the checkpoint's card (default settings, sweep, metrics)
    name: str = "AdaViT-S/14 Flowers-102"
    ood: OODStats | None = None  # the card's out-of-distribution statistics (None: the app says there is no check)

    @property
    def sweep(self) -> list[dict]:
        return list(self.card.get("sweep") or [])

    @property
    def default_settings(self) -> dict:
        return dict(self.card.get("default_settings") or {})


def _names(model: AdaViT, card: dict, data_root: Path | None) -> tuple[str, ...]:
    for names in (card.get("class_names"), model.config.class_names):
        if names and len(names) == model.config.num_classes:
            return tuple(names)
    if model.config.num_classes == data.NUM_CLASSES:
        return tuple(data.class_names(data_root))  # the data's names, else the shipped card's, else numbers
    return tuple(f"class {i + 1}" for i in range(model.config.num_classes))


def parameter_free_twins(app_model: AppModel) -> list[AppModel]:
    """The checkpoint with each learned part (gate, scorer) swapped back to its parameter-free original.

    The twins share the ViT's weights (no copy), so the model dropdown lets a user compare, on the
    same photo, the learned gate with the detail score and the learned scorer with CLS attention x |V|.
    The card's sweep and the OOD statistics belong to the learned model, so a twin has neither.
    """
    model = app_model.model
    if not isinstance(model, AdaViT):
        return []
    twins = []
    if model.gate is not None:
        twin = AdaViT(model.vit, replace(model.config, gate="detail"))
        twin.scorers = model.scorers
        twins.append(("detail-score gate", twin))
    if model.scorers is not None:
        twin = AdaViT(model.vit, replace(model.config, scorer="attention"))
        twin.gate = model.gate
        twins.append(("CLS attention x |V| score", twin))
    card = {k: v for k, v in app_model.card.items() if k not in ("sweep", "sweep_resolution", "compare")}
    return [replace(app_model, model=twin.eval(), name=f"{app_model.name} · {label}", card=card, ood=None)
            for label, twin in twins]


def short_name(model: AdaViT) -> str:
    """AdaViT-S/14, AdaViT-B/16, ...: timm's size letter from the width, then the patch."""
    size = {192: "Ti", 384: "S", 768: "B", 1024: "L"}.get(int(model.vit.embed_dim), f"{model.vit.embed_dim}d")
    return f"AdaViT-{size}/{model.patch}"


def load_default(weights: str | Path | None = None, data_root: Path | None = None) -> AppModel:
    """Shipped checkpoint -> pretrained backbone + random head -> random weights (first that works)."""
    path = Path(weights) if weights else checkpoint.SHIPPED
    if weights and not path.exists():  # asked for by name: never serve something else in its place
        raise ValueError(f"no checkpoint at {path}; train one with `adavit train --export PATH`")
    if path.exists():
        model = checkpoint.load_model(path, device())
        card = checkpoint.read_card(path)
        if device() == "cpu":  # batch-1 speed at the default setting; a layout change only, same outputs
            optimize_for_cpu(model, Settings(**card["default_settings"]) if card.get("default_settings")
                             else Settings())
        top1 = ((card.get("val_metrics") or {}).get("default") or {}).get("top1")
        score = f", val top-1 {100 * top1:.1f}%" if isinstance(top1, (int, float)) else ""
        dataset = (card.get("dataset") or {}).get("name", "Flowers-102")
        return AppModel(model, _names(model, card, data_root), f"trained checkpoint {path.name}{score}", True, card,
                        f"{short_name(model)} {dataset}", for_checkpoint(path, card))
    try:
        model = checkpoint.from_backbone()
        why = (f"no checkpoint at {path.relative_to(checkpoint.REPO) if path.is_relative_to(checkpoint.REPO) else path}"
               " yet: pretrained ViT-S/14 backbone with an UNTRAINED head, so the classes shown are random "
               "(token scores and pruning are real)")
        return AppModel(model, _names(model, {}, data_root), why, False)
    except Exception as e:  # no backbone converted on this machine: still show the mechanics
        model = AdaViT.create(AdaViTConfig())
        why = (f"no checkpoint and no pretrained backbone ({type(e).__name__}): RANDOM weights, so predictions, "
               "scores and accuracy are meaningless; only the mechanics are real")
        return AppModel(model, _names(model, {}, data_root), why, False)


def hub_reachable(timeout: float = 2.0) -> bool:
    """A TCP connect to the hub: fails fast offline instead of waiting on download retries."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    url = urlparse(HUB)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def load_timm(name: str, pretrained: bool = True) -> AppModel:
    """A timm ViT by name, with pretrained hub weights, ATS switched on by `adavit.patch`.

    ValueError with a message for the UI when the name is unknown, the hub is out of reach or the
    model does not fit; the caller keeps its current model then. `pretrained=False` (random
    weights) is for tests.
    """
    import timm
    from timm.data import ImageNetInfo

    from ..core.timm_vit import UniformViT

    name = name.strip()
    if not name:
        raise ValueError("type a timm model name, e.g. deit_small_patch16_224")
    arch = name.split(".")[0]
    if not timm.list_models(arch):
        raise ValueError(f"timm has no model called {name!r}; try one of {', '.join(TIMM_SUGGESTIONS)}")
    if pretrained and not hub_reachable():
        raise ValueError(f"the Hugging Face hub ({HUB}) is not reachable from this server, so the pretrained "
                         f"weights of {name} cannot be downloaded; keeping the current model")
    try:
        vit = timm.create_model(name, pretrained=pretrained, dynamic_img_size=True)
    except Exception as e:  # network errors, gated repos, no pretrained tag, not a ViT
        what = f"{'pretrained ' if pretrained else ''}{name}"
        raise ValueError(f"could not load {what}: {e}; keeping the current model") from e
    if not hasattr(vit, "patch_embed"):
        raise ValueError(f"{name} is not a timm VisionTransformer; keeping the current model")
    from ..core.plugin import patch

    try:
        model = UniformViT(patch(vit), name).eval()  # the plug-in places ATS1/ATS2 and vets the model
    except ValueError as e:
        raise ValueError(f"{name} cannot run with ATS: {e}; keeping the current model") from e
    n = model.config.num_classes
    info = ImageNetInfo()  # reads timm's class-name files: once, not once per class
    names = tuple(info.index_to_description(i) for i in range(n)) if n == 1000 else \
        tuple(f"class {i + 1}" for i in range(n))
    weights = "pretrained ImageNet weights from the hub" if pretrained else "RANDOM weights"
    stages = "/".join(str(n) for n in model.config.stages)
    return AppModel(model, names, f"timm {name} ({weights}), ATS by adavit.patch after blocks {stages}; "
                    f"plain {model.patch} px patches, so the fine-ratio slider does not apply. Its classes are "
                    "ImageNet's: no Flowers-102 accuracy", pretrained, {}, name)


def tiny(num_classes: int = 102, seed: int = 0) -> AppModel:
    """A 3-block, 48-dim random AdaViT (~0.1 M parameters): the app's mechanics in milliseconds.

    For tests and `python -m adavit appbench --tiny`; its predictions mean nothing.
    """
    import torch
    from timm.models.vision_transformer import VisionTransformer

    from ..core.config import PATCH

    torch.manual_seed(seed)
    vit = VisionTransformer(img_size=224, patch_size=PATCH, embed_dim=48, depth=3, num_heads=2,
                            num_classes=num_classes)
    model = AdaViT(vit, AdaViTConfig(num_classes=num_classes, stages=(1, 1, 1))).eval()
    return AppModel(model, tuple(f"flower {i + 1}" for i in range(num_classes)),
                    "tiny random test model (3 blocks): predictions mean nothing", False, {}, "tiny test model")
