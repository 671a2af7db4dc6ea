"""A model soup: the element-wise mean of fine-tuned AdaViT checkpoints (Wortsman et al., 2022).

    python -m adavit soup A.safetensors B.safetensors [...] --out SOUP.safetensors
    python -m adavit soup SOUP_AB.safetensors C.safetensors --weights 2,1 --out SOUP_ABC.safetensors

A soup counts as many runs as it averages: weighting the two-run soup 2 and a third run 1 gives the
uniform mean of all three, up to the fp16 rounding of the saved soup, without the first two runs'
files.

Fine-tunes that start from the same pretrained backbone and the same linear-probe head tend to stay
in one basin of the loss, where their average is itself a good network, often better than each
ingredient, at no cost at inference. Whether it is better here is measured, not assumed: run
`compare` on the soup like on any checkpoint. The ingredients must share one config (backbone,
stages, windows, classes); the soup's card lists them with their SHA-256 and recipes.

One difference is allowed: a learned gate or scorer that only some ingredients have (a run with every
token, say, trained none). The soup keeps it, averaged over the ingredients that have it, so a network
fine-tuned for small images can be averaged into an AdaViT (WiSE-FT across recipes). The card says which
ingredients each such part came from.
"""
from __future__ import annotations

import argparse
import hashlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from ..core.config import AdaViTConfig
from ..core.model import AdaViT
from . import checkpoint

LEARNABLE = ("gate", "scorer")  # parts whose learned form has weights that its parameter-free twin lacks


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def soup(paths: Sequence[str | Path], weights: Sequence[float] | None = None) -> AdaViT:
    """The (weighted) mean of the checkpoints' weights, in fp32, as one AdaViT."""
    if len(paths) < 2:
        raise ValueError(f"a soup needs at least two checkpoints, got {len(paths)}")
    weights = [1.0] * len(paths) if weights is None else [float(w) for w in weights]
    if len(weights) != len(paths):
        raise ValueError(f"{len(weights)} weights for {len(paths)} checkpoints: give one per checkpoint")
    if not all(w > 0 for w in weights):
        raise ValueError(f"weights must be positive, got {weights}")
    models = [checkpoint.load_model(p) for p in paths]
    config = soup_config(paths, [m.config for m in models])
    states = [m.state_dict() for m in models]
    out = AdaViT.create(config)
    mean = {}
    for k in out.state_dict():
        have = [i for i, s in enumerate(states) if k in s]  # a learned part only some ingredients trained
        w = torch.tensor([weights[i] for i in have])
        mean[k] = torch.einsum("n,n...->...", w / w.sum(), torch.stack([states[i][k].float() for i in have]))
    out.load_state_dict(mean)
    return out.eval()


def soup_config(paths: Sequence[str | Path], configs: Sequence[AdaViTConfig]) -> AdaViTConfig:
    """The ingredients' one config, with a learned gate or scorer if any ingredient has one."""
    dicts = [c.to_dict() for c in configs]
    learned = {part: "learned" for part in LEARNABLE if any(d[part] == "learned" for d in dicts)}
    want = {**dicts[0], **learned}
    for p, d in zip(paths, dicts, strict=True):
        diff = sorted(k for k in d if d[k] != want.get(k) and k not in learned)
        if diff:
            raise ValueError(f"{p} differs from {paths[0]} in {', '.join(diff)}: only checkpoints of one config "
                             "can be averaged (a learned gate or scorer that some lack is the one exception)")
    return replace(configs[0], **learned)


def held_out_by_all(cards: Sequence[dict]) -> dict | None:
    """The train images no ingredient trained on (`train --holdout`): the soup's selection set, if any."""
    held = [(c.get("selection") or {}).get("holdout_files") for c in cards]
    if not all(held):
        return None
    common = set.intersection(*map(set, held))
    return {"holdout_files": [f for f in held[0] if f in common]} if common else None


def partial_parts(paths: Sequence[str | Path], configs: Sequence[AdaViTConfig]) -> dict[str, list[str]]:
    """{part: the ingredients it was averaged over} for each learned part that not every ingredient has."""
    return {part: [str(p) for p, c in zip(paths, configs, strict=True) if getattr(c, part) == "learned"]
            for part in LEARNABLE if len({getattr(c, part) for c in configs}) > 1}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="adavit soup", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="safetensors checkpoints of one config")
    p.add_argument("--out", required=True, help="where to write the soup (safetensors + card)")
    p.add_argument("--weights", help="comma-separated, one per checkpoint (default: equal); e.g. 2,1 to add "
                   "a third run to a two-run soup")
    args = p.parse_args(argv)
    try:
        weights = None if args.weights is None else [float(w) for w in args.weights.split(",")]
    except ValueError:
        raise SystemExit(f"adavit soup: --weights {args.weights!r} is not a comma-separated list of numbers") from None
    paths = [Path(c) for c in args.checkpoints]
    missing = [str(c) for c in paths if not c.exists()]
    if missing:
        raise SystemExit(f"adavit soup: no checkpoint at {', '.join(missing)}")
    out = Path(args.out)
    if out.resolve() in {c.resolve() for c in paths}:
        raise SystemExit(f"adavit soup: --out {out} is one of the ingredients; write the soup elsewhere")
    try:
        model = soup(paths, weights)
    except ValueError as e:
        raise SystemExit(f"adavit soup: {e}") from None
    cards = [checkpoint.read_card(c) for c in paths]
    card = {
        "dataset": cards[0].get("dataset"),
        "default_settings": cards[0].get("default_settings"),
        # data.class_names reads the card's list offline (torchvision's download has no names file)
        "class_names": cards[0].get("class_names") or list(model.config.class_names),
        "recipe": {"soup": [{"path": str(c), "sha256": sha256(c), "weight": w, "recipe": k.get("recipe"),
                             "command": k.get("command")}
                            for c, k, w in zip(paths, cards, weights or [1.0] * len(paths), strict=True)],
                   "averaged_over": partial_parts(paths, [checkpoint.load_config(c) for c in paths])},
        "selection": held_out_by_all(cards),
        "command": "python -m adavit soup " + " ".join(map(str, paths)) + f" --out {out}"
                   + (f" --weights {args.weights}" if weights else ""),
    }
    checkpoint.save(model, out, card)
    print(f"wrote {out}: the mean of {len(paths)} checkpoints ({', '.join(map(str, paths))})")
