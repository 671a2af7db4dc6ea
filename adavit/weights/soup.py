"""A model soup: the element-wise mean of fine-tuned AdaViT checkpoints (Wortsman et al., 2022).

    python -m adavit soup A.safetensors B.safetensors [...] --out SOUP.safetensors

Fine-tunes that start from the same pretrained backbone and the same linear-probe head tend to stay
in one basin of the loss, where their average is itself a good network, often better than each
ingredient, at no cost at inference. Whether it is better here is measured, not assumed: run
`compare` on the soup like on any checkpoint. The ingredients must share one config (backbone,
stages, gate, scorer, classes); the soup's card lists them with their SHA-256 and recipes.
"""
from __future__ import annotations

import argparse
import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch

from ..core.model import AdaViT
from . import checkpoint


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def soup(paths: Sequence[str | Path]) -> AdaViT:
    """The mean of the checkpoints' weights, in fp32, as one AdaViT."""
    if len(paths) < 2:
        raise ValueError(f"a soup needs at least two checkpoints, got {len(paths)}")
    models = [checkpoint.load_model(p) for p in paths]
    configs = [m.config.to_dict() for m in models]
    for p, c in zip(paths[1:], configs[1:], strict=True):
        if c != configs[0]:
            diff = sorted(k for k in c if c[k] != configs[0].get(k))
            raise ValueError(f"{p} differs from {paths[0]} in {', '.join(diff)}: only checkpoints of one config "
                             "can be averaged")
    states = [m.state_dict() for m in models]
    mean = {k: torch.stack([s[k].float() for s in states]).mean(0) for k in states[0]}
    out = AdaViT.create(models[0].config)
    out.load_state_dict(mean)
    return out.eval()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="adavit soup", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="safetensors checkpoints of one config")
    p.add_argument("--out", required=True, help="where to write the soup (safetensors + card)")
    args = p.parse_args(argv)
    paths = [Path(c) for c in args.checkpoints]
    missing = [str(c) for c in paths if not c.exists()]
    if missing:
        raise SystemExit(f"adavit soup: no checkpoint at {', '.join(missing)}")
    out = Path(args.out)
    if out.resolve() in {c.resolve() for c in paths}:
        raise SystemExit(f"adavit soup: --out {out} is one of the ingredients; write the soup elsewhere")
    try:
        model = soup(paths)
    except ValueError as e:
        raise SystemExit(f"adavit soup: {e}") from None
    cards = [checkpoint.read_card(c) for c in paths]
    card = {
        "dataset": cards[0].get("dataset"),
        "default_settings": cards[0].get("default_settings"),
        # data.class_names reads the card's list offline (torchvision's download has no names file)
        "class_names": cards[0].get("class_names") or list(model.config.class_names),
        "recipe": {"soup": [{"path": str(c), "sha256": sha256(c), "recipe": k.get("recipe"),
                             "command": k.get("command")} for c, k in zip(paths, cards, strict=True)]},
        "command": "python -m adavit soup " + " ".join(map(str, paths)) + f" --out {out}",
    }
    checkpoint.save(model, out, card)
    print(f"wrote {out}: the mean of {len(paths)} checkpoints ({', '.join(map(str, paths))})")
