"""ATS for any timm VisionTransformer in one call, ToMe-style: `adavit.patch(model)`.

    model = timm.create_model("deit_small_patch16_224", pretrained=True)
    adavit.patch(model, keep=(0.5, 0.5))        # in place; returns the model
    adavit.set_sampling(model, keep=(0.7, 0.4), mode="sample", fuse=True)
    adavit.unpatch(model)                        # the plain model again

No timm forward is copied: `model.blocks` becomes an `ATSBlocks`, an nn.Sequential subclass holding
the very same block modules (state_dict keys stay `blocks.N...`, indexing and len work), whose
forward runs them in stages with an ATS sampler after the blocks at indices `after` (shared with
AdaViT: `adavit.stages.run_stages`). Later blocks see a shorter token tensor, so they do less work;
timm's own norm, pooling and head then run on it as usual.

The paths through timm that iterate over the blocks themselves (gradient checkpointing, a forward
with an attention mask, `forward_intermediates` / `get_intermediate_layers`,
`prune_intermediate_layers`) would bypass the samplers, so a patched model never takes them
silently: `patch` swaps the model's class for a subclass (ToMe does the same) whose overrides of
exactly those methods refuse with a message, and `unpatch` swaps it back.
"""
from __future__ import annotations

from collections.abc import Sequence
from numbers import Real

import torch
from torch import nn

from .config import Mode, Sampling
from .sampler import Tokens
from .stages import run_stages, split_blocks

DEFAULT_KEEP = (0.5, 0.5)


def default_after(n_blocks: int, n_samplers: int) -> tuple[int, ...]:
    """Block indices after which the samplers run, splitting the blocks into equal stages."""
    stages = n_samplers + 1
    if n_blocks < stages:
        raise ValueError(f"{n_samplers} samplers need at least {stages} blocks, the model has {n_blocks}")
    return tuple(round(n_blocks * (i + 1) / stages) - 1 for i in range(n_samplers))


def _check_after(after: Sequence[int], n_blocks: int, n_samplers: int) -> tuple[int, ...]:
    after = tuple(int(a) for a in after)
    if len(after) != n_samplers:
        raise ValueError(f"after needs one block index per keep ratio ({n_samplers}), got {after}")
    if any(a < 0 or a >= n_blocks - 1 for a in after) or any(b <= a for a, b in zip(after, after[1:])):
        raise ValueError(
            f"after must be increasing block indices in [0, {n_blocks - 2}] (a sampler after the last "
            f"block would have nothing to save), got {after}"
        )
    return after


def _padding_problem(model: nn.Module) -> str | None:
    """Why padded rows would change this model's output (None: padding can be made exact).

    Sample mode keeps a different number of tokens per image, so a batch is padded to its longest
    image. Padded rows are masked out of attention, but timm's pooling reads every row after the
    blocks. CLS pooling never reads them. For mean pooling, rows equal to the mean of the valid rows
    leave the mean unchanged ((n*m + k*m) / (n+k) = m), and since the mean never exceeds the maximum
    per channel, 'max' and 'avgmax' are unchanged too; this holds only if nothing per-token (the
    final norm) runs between the blocks and the pool, which timm's avg-pool ViTs satisfy (they
    normalise after pooling, fc_norm). Attention pooling ('map') or no pooling can't be made exact.
    """
    pool = getattr(model, "global_pool", "token")
    if getattr(model, "attn_pool", None) is not None:
        return "attention pooling ('map') would attend to the padded rows"
    if pool == "token":
        return None
    if pool in ("avg", "max", "avgmax"):
        if isinstance(getattr(model, "norm", nn.Identity()), nn.Identity):
            return None
        return f"'{pool}' pooling after a per-token final norm would see the padded rows"
    return f"global_pool={pool!r} returns every token, padded rows included"


class ATSBlocks(nn.Sequential):
    """timm's blocks (the same modules) run in stages with an ATS sampler between stages."""

    def __init__(self, *blocks: nn.Module, sampling: Sampling = Sampling(DEFAULT_KEEP),
                 after: Sequence[int] | None = None, num_prefix: int = 1,
                 padding_problem: str | None = None, pool_prefix: bool = False):
        super().__init__(*blocks)
        self.num_prefix = num_prefix
        self.padding_problem = padding_problem  # why padded rows can't be made exact; None: they can
        self.pool_prefix = pool_prefix  # the model's mean pool includes the prefix tokens
        self.configure(sampling, after)
        self.tokens_per_stage: torch.Tensor | None = None  # (B, stages) of the last forward, CLS included

    # ------------------------------------------------------------ settings
    def configure(self, sampling: Sampling, after: Sequence[int] | None) -> None:
        """Set the sampling and the sampler positions together (after=None: equal stages)."""
        if not isinstance(sampling, Sampling):
            raise ValueError(f"sampling must be an adavit.Sampling, got {type(sampling).__name__}")
        if after is None:
            default_after(len(self), len(sampling.keep))  # raises when the stages can't be made
            self._after = None
        else:
            self._after = _check_after(after, len(self), len(sampling.keep))
        self._sampling = sampling

    @property
    def sampling(self) -> Sampling:
        return self._sampling

    @sampling.setter
    def sampling(self, value: Sampling) -> None:
        self.configure(value, self._after)

    @property
    def after(self) -> tuple[int, ...]:
        """Indices of the blocks after which a sampler runs (explicit, or the even default split)."""
        return self._after if self._after is not None else default_after(len(self), len(self._sampling.keep))

    def stages(self) -> list[list[nn.Module]]:
        bounds = (-1, *self.after, len(self) - 1)
        return split_blocks(list(self), [b - a for a, b in zip(bounds, bounds[1:])])

    def extra_repr(self) -> str:
        s = self._sampling
        return f"ATS after blocks {self.after}: keep={s.keep}, mode={s.mode!r}, fuse={s.fuse}"

    def __getitem__(self, idx):
        # nn.Sequential builds slices with self.__class__; a slice is plain blocks, not a sampler
        if isinstance(idx, slice):
            return nn.Sequential(*list(self)[idx])
        return super().__getitem__(idx)

    # ------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self._sampling
        p = self.num_prefix
        if s.mode == "topk" and all(k >= 1.0 for k in s.keep):  # nothing to drop: the plain blocks
            self.tokens_per_stage = torch.full((x.shape[0], len(s.keep) + 1), x.shape[1], device=x.device)
            return super().forward(x)
        src = torch.arange(x.shape[1] - p, device=x.device).expand(x.shape[0], -1)
        out = run_stages(self.stages(), Tokens(x, src, None, p), s)
        self.tokens_per_stage = torch.stack(out.counts, 1).detach()
        return self._fill_padding(out.tokens)

    def _fill_padding(self, tokens: Tokens) -> torch.Tensor:
        """Padded rows set to the mean of the valid patch tokens (see `_padding_problem` for why)."""
        if tokens.valid is None:
            return tokens.x
        if self.padding_problem is not None:
            raise ValueError(
                f"mode='sample' kept different token counts in this batch, and {self.padding_problem}: "
                "run one image at a time, use mode='topk', or a model with CLS or average pooling"
            )
        p = self.num_prefix
        valid = tokens.valid.unsqueeze(-1).to(tokens.x.dtype)
        prefix, patches = tokens.x[:, :p], tokens.x[:, p:]
        total, count = (patches * valid).sum(1, keepdim=True), valid.sum(1, keepdim=True)
        if self.pool_prefix:  # the pool averages the prefix rows too, so the fill must as well
            total, count = total + prefix.sum(1, keepdim=True), count + p
        return torch.cat([prefix, torch.where(valid.bool(), patches, total / count)], 1)


BYPASS = "runs timm's blocks one by one, which would skip ATS; call adavit.unpatch(model) first"


class ATSGuard:
    """Mixed into a patched model's class: timm's paths that iterate over the blocks refuse.

    Each override only checks and delegates to timm's own method; no forward code is copied.
    """

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            raise ValueError(f"gradient checkpointing {BYPASS}, then enable checkpointing")
        super().set_grad_checkpointing(False)

    def forward_features(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False):
        if attn_mask is not None or is_causal:
            raise ValueError(f"forward_features with attn_mask or is_causal {BYPASS}")
        if getattr(self, "grad_checkpointing", False):
            raise ValueError(f"this model has grad_checkpointing set, and gradient checkpointing {BYPASS}")
        return super().forward_features(x)

    def forward_intermediates(self, *args, **kwargs):
        raise ValueError(f"forward_intermediates (and get_intermediate_layers) returns every token of every "
                         f"block and {BYPASS}")

    def prune_intermediate_layers(self, *args, **kwargs):
        raise ValueError("prune_intermediate_layers slices the blocks, which would drop the samplers; "
                         "call adavit.unpatch(model) first")


_GUARDED: dict[type, type] = {}


def _guarded_class(base: type) -> type:
    """The ATS subclass of `base`, made once per class, and findable by name (so copy and pickle work)."""
    if base not in _GUARDED:
        name = f"ATS{base.__name__}"
        cls = type(name, (ATSGuard, base), {"__module__": __name__, "__qualname__": name})
        _GUARDED[base] = globals()[name] = cls
    return _GUARDED[base]


def _blocks(model: nn.Module) -> ATSBlocks:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, ATSBlocks):
        raise ValueError("this model is not patched: call adavit.patch(model) first")
    return blocks


def _keep_tuple(keep, n_samplers: int) -> tuple[float, ...]:
    if isinstance(keep, Real):  # one ratio for every sampler
        return (float(keep),) * n_samplers
    try:
        return tuple(float(k) for k in keep)
    except (TypeError, ValueError):
        raise ValueError(f"keep must be a number or a sequence of numbers in (0, 1], got {keep!r}") from None


def patch(model: nn.Module, keep: Sequence[float] | float = DEFAULT_KEEP, after: Sequence[int] | None = None,
          mode: Mode = "topk", fuse: bool = False) -> nn.Module:
    """Turn ATS on for a timm VisionTransformer, in place, and return it.

    keep: the share of patch tokens each sampler keeps (one per sampler, in (0, 1]). In topk mode
    keep=1 everywhere is exactly the unpatched model; in sample mode keep is ATS's budget, and the
    sampler may keep fewer (inverse-transform sampling picks a significant token more than once).
    after: block indices after which the samplers run; default: equal stages.
    mode: "topk" or "sample"; fuse: merge the dropped tokens into one score-weighted token (EViT).
    Patching a patched model just updates its settings.
    """
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential):
        raise ValueError(f"{type(model).__name__} has no nn.Sequential `blocks`; "
                         "patch expects a timm VisionTransformer")
    if getattr(model, "cls_token", None) is None:
        raise ValueError("ATS scores tokens by the CLS token's attention, and this model has no class token")
    if getattr(model, "grad_checkpointing", False):
        raise ValueError("gradient checkpointing runs the blocks one by one and would bypass ATS; "
                         "call model.set_grad_checkpointing(False) first")
    for i, blk in enumerate(blocks):
        if not isinstance(getattr(getattr(blk, "attn", None), "qkv", None), nn.Linear):
            raise ValueError(f"block {i} ({type(blk).__name__}) has no `attn.qkv` Linear; "
                             "ATS needs timm's standard fused-qkv Attention")
    sampling = Sampling(_keep_tuple(keep, len(DEFAULT_KEEP) if after is None else len(after)), mode, fuse)
    pooling = {"padding_problem": _padding_problem(model),
               "pool_prefix": bool(getattr(model, "pool_include_prefix", False))}
    if isinstance(blocks, ATSBlocks):
        blocks.configure(sampling, after)
        for name, value in pooling.items():
            setattr(blocks, name, value)
    else:
        model.blocks = ATSBlocks(*blocks, sampling=sampling, after=after,
                                 num_prefix=int(model.num_prefix_tokens), **pooling)
        model.__class__ = _guarded_class(type(model))
    return model


def set_sampling(model: nn.Module, keep: Sequence[float] | float | None = None, mode: Mode | None = None,
                 fuse: bool | None = None, after: Sequence[int] | None = None) -> Sampling:
    """Change a patched model's sampling (only what is given; the rest stays); returns it.

    Equivalent: `model.blocks.sampling = adavit.Sampling(keep, mode, fuse)`.
    """
    blocks = _blocks(model)
    old = blocks.sampling
    after = blocks._after if after is None else after
    new = Sampling(
        old.keep if keep is None else _keep_tuple(keep, len(old.keep) if after is None else len(after)),
        old.mode if mode is None else mode,
        old.fuse if fuse is None else fuse,
    )
    blocks.configure(new, after)
    return new


def unpatch(model: nn.Module) -> nn.Module:
    """The plain nn.Sequential of the same blocks again (a no-op on an unpatched model)."""
    if isinstance(getattr(model, "blocks", None), ATSBlocks):
        model.blocks = nn.Sequential(*model.blocks)
    if isinstance(model, ATSGuard):
        model.__class__ = next(c for c in type(model).__mro__[1:] if not issubclass(c, ATSGuard))
    return model


def is_patched(model: nn.Module) -> bool:
    return isinstance(getattr(model, "blocks", None), ATSBlocks)
