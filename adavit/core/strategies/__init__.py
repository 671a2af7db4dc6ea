"""Token-reduction strategies on one ViT, behind one interface (see base.py), selectable by name.

    from adavit.core.strategies import make
    outcome = make("evit", keep=(0.5, 0.5)).forward(model, images)

`STRATEGIES` maps each name to its settings dataclass; `make(name, **settings)` builds one.
"""
from __future__ import annotations

from .adavit import AdaViTStrategy
from .ats import ATS, inverse_transform_sampling
from .base import Outcome
from .evit import EViT
from .random_drop import RandomDrop
from .resolution import Resolution
from .tome import ToMe

STRATEGIES: dict[str, type] = {
    "adavit": AdaViTStrategy, "resolution": Resolution, "random": RandomDrop, "evit": EViT, "ats": ATS,
    "tome": ToMe,
}


def make(name: str, **settings):
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    return STRATEGIES[name](**settings)


__all__ = ["ATS", "STRATEGIES", "AdaViTStrategy", "EViT", "Outcome", "RandomDrop", "Resolution", "ToMe",
           "inverse_transform_sampling", "make"]
