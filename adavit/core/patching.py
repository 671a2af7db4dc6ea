"""Content-adaptive patching: a parameter-free gate picks detailed regions, which split into fine tokens.

Every region of 2x2 patches (28 px for a 14 px patch, 32 px for 16) becomes either one coarse
token (the region area-resized to one patch, through the same pretrained patch embedding) or four
fine tokens. A coarse token's position embedding is the mean of its four fine ones, so it sits where
its fine tokens would have been. The prefix tokens (CLS, then registers or a distillation token)
come first, exactly as the backbone's own `_pos_embed` builds them.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

from .config import PATCH, check_side
from .gate import straight_through


@dataclass
class Layout:
    """Where each patch token of a batch came from (T tokens per image, prefix tokens excluded)."""

    boxes: torch.Tensor  # (B, T, 4) float: x0, y0, x1, y1 in model-input pixels
    scales: torch.Tensor  # (B, T) int: 1 = fine (one patch), 2 = coarse (a 2x2-patch region)
    gate: torch.Tensor  # (B, T) the gate's score of the token's region (detail energy, or a learned logit)
    size: tuple[int, int]  # (H, W) of the model input
    gate_logits: torch.Tensor | None = None  # (B, R) a learned gate's split logits per region, with gradient


def detail_score(images: torch.Tensor, low: torch.Tensor | None = None, patch: int = PATCH) -> torch.Tensor:
    """Per-region energy of what a coarse token loses: the image minus its 2x area-downsampled copy.

    This is exactly the detail that the coarse embedding (region resized to one patch) cannot see.
    `low` is `F.avg_pool2d(images, 2)` when the caller has it already. Returns (B, H/2p, W/2p).
    """
    b, c, h, w = images.shape
    low = F.avg_pool2d(images, 2) if low is None else low
    # nearest 2x upsampling as a broadcast over 2x2 blocks: the same values, without the copy
    diff = images.reshape(b, c, h // 2, 2, w // 2, 2) - low[:, :, :, None, :, None]
    energy = diff.pow(2).sum(1).reshape(b, 1, h, w)
    return F.avg_pool2d(energy, 2 * patch).squeeze(1)


def split_mask(score: torch.Tensor, fine_ratio: float) -> torch.Tensor:
    """The top `fine_ratio` share of regions per image (stable ties, so results are reproducible)."""
    b, gh, gw = score.shape
    n_fine = round(fine_ratio * int(gh) * int(gw))  # int(): shapes are tensors under ONNX tracing
    order = torch.sort(score.flatten(1), dim=1, descending=True, stable=True).indices
    positions = torch.arange(gh * gw, device=score.device).expand(b, -1).contiguous()
    ranks = torch.empty_like(order).scatter_(1, order, positions)
    return (ranks < n_fine).view(b, gh, gw)


def prefix_positions(vit) -> int:
    """How many leading rows of `pos_embed` belong to prefix tokens (none with `no_embed_class`)."""
    return 0 if getattr(vit, "no_embed_class", False) else int(vit.num_prefix_tokens)


def position_grid(vit, grid: tuple[int, int]) -> torch.Tensor:
    """The pretrained position grid resampled to `grid` patches: (1, gh*gw, D).

    Bicubic with antialias off is what the backbone was trained against (antialias on is wrong).
    """
    n = prefix_positions(vit)
    return resample_abs_pos_embed(
        vit.pos_embed, list(grid), num_prefix_tokens=n, interpolation="bicubic", antialias=False
    )[:, n:]


def prefix_tokens(vit) -> torch.Tensor:
    """(1, P, D): CLS, then registers or a distillation token, with their positions if they have any."""
    parts = [t for t in (vit.cls_token, getattr(vit, "dist_token", None), getattr(vit, "reg_token", None))
             if t is not None]
    prefix = torch.cat(parts, 1)
    n = prefix_positions(vit)
    return prefix + vit.pos_embed[:, :n] if n else prefix


def _positions(vit, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Fine (1, gh*gw, D) and coarse (1, gh*gw/4, D) position embeddings for `grid`.

    The bicubic resample costs ~2 ms per call at 224 px on 2 cores, yet only changes when pos_embed
    does. So when no gradient must flow into pos_embed it is cached on the ViT, keyed by the
    parameter object, its storage and version counter (load_state_dict and optimizer steps bump it)
    and by inference mode (an inference tensor must not leak into autograd-recording code).
    """
    pos_embed = vit.pos_embed
    cacheable = not (torch.is_grad_enabled() and pos_embed.requires_grad)
    stamp = (pos_embed.data_ptr(), pos_embed._version, torch.is_inference_mode_enabled())
    cache = vit.__dict__.setdefault("_adavit_positions", {})
    if cacheable and grid in cache:
        owner, old_stamp, value = cache[grid]
        if owner() is pos_embed and old_stamp == stamp:  # the very same parameter, unchanged
            return value
    gh, gw = grid
    pos = position_grid(vit, grid)
    pos_coarse = F.avg_pool2d(pos.transpose(1, 2).reshape(1, -1, gh, gw), 2).flatten(2).transpose(1, 2)
    if cacheable:
        if len(cache) >= 8:  # a handful of resolutions at most; forget them all rather than grow
            cache.clear()
        cache[grid] = (weakref.ref(pos_embed), stamp, (pos, pos_coarse))
    return pos, pos_coarse


def _candidates(gh: int, gw: int, patch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boxes, scales and raster keys of all fine (first) then all coarse candidate tokens."""
    region = 2 * patch
    fy, fx = torch.meshgrid(torch.arange(gh, device=device), torch.arange(gw, device=device), indexing="ij")
    fine_xy = torch.stack([fx, fy], -1).flatten(0, 1) * patch
    cy, cx = torch.meshgrid(torch.arange(gh // 2, device=device), torch.arange(gw // 2, device=device), indexing="ij")
    coarse_xy = torch.stack([cx, cy], -1).flatten(0, 1) * region
    boxes = torch.cat([torch.cat([fine_xy, fine_xy + patch], 1), torch.cat([coarse_xy, coarse_xy + region], 1)])
    scales = torch.cat([torch.ones(len(fine_xy)), torch.full((len(coarse_xy),), 2.0)]).to(device, torch.long)
    # raster index of the top-left fine cell: orders tokens like the plain ViT when all are fine
    keys = (boxes[:, 1] // patch) * gw + boxes[:, 0] // patch
    return boxes.float(), scales, keys


def _patch_pixels(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, C*p*p): each patch's pixels in raster order, flattened as the
    patch embedding's conv weight is (C, p, p), so a Linear with that weight is the conv."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // patch) * (w // patch), c * patch * patch)


def patch_embeddings(grid: int, tokens: int, fine: bool, coarse: bool, gate_read: bool) -> int:
    """Patch projections `embed` runs for one image of `grid` patches and `tokens` patch tokens: the
    whole fine or coarse grid for a one-scale layout, else only its tokens, plus every region when a
    learned gate read them (measure.flops counts FLOPs by this rule)."""
    if fine and coarse:
        return tokens + (grid // 4 if gate_read else 0)
    return grid * fine + grid // 4 * coarse


def patch_size(vit) -> int:
    p = tuple(vit.patch_embed.patch_size)
    if len(p) != 2 or p[0] != p[1]:
        raise ValueError(f"mixed-scale patching needs square patches, this ViT has {p}")
    return int(p[0])


def embed(vit, images: torch.Tensor, fine_ratio: float, gate=None) -> tuple[torch.Tensor, Layout]:
    """Mixed-scale tokens (B, P+T, D), prefix first, with position embeddings, and their layout.

    `gate`: a `core.gate.LearnedGate` ranks the regions instead of the detail score; while a
    gradient is recorded, the chosen tokens carry its straight-through decision. At inference it
    runs only when some regions split and some don't (`measure.flops` counts it by that rule).

    Only the patch embeddings that are used get computed: when every region splits (fine_ratio 1:
    the plain ViT) there is no coarse conv and no gather, and when none does, no fine conv.
    """
    b = images.shape[0]
    h, w = int(images.shape[2]), int(images.shape[3])  # ints even under ONNX tracing (the side is fixed there)
    patch = patch_size(vit)
    check_side(h, "image height", patch)
    check_side(w, "image width", patch)
    gh, gw = h // patch, w // patch
    proj = vit.patch_embed.proj
    pos, pos_coarse = _positions(vit, (gh, gw))
    low = F.avg_pool2d(images, 2)  # what a coarse token sees, and the gate's reference
    coarse = logits = None
    regions = (gh // 2) * (gw // 2)
    # with every region split or none, the gate decides nothing: skip its cost, unless training
    # (the batch-shaping loss reads its logits)
    moot = round(fine_ratio * regions) in (0, regions) and not torch.is_grad_enabled()
    if gate is None or moot:
        score = detail_score(images, low, patch)  # (B, gh/2, gw/2)
    else:
        coarse = proj(low).flatten(2).transpose(1, 2) + pos_coarse  # (B, R, D): what the gate reads
        logits = gate(coarse)
        score = logits.detach().view(b, gh // 2, gw // 2)
    split = split_mask(score, fine_ratio)
    n_split = int(split[0].sum())  # the same for every image
    boxes, scales, keys = _candidates(gh, gw, patch, images.device)
    n_fine = gh * gw
    if n_split == split[0].numel():  # all fine, in raster order: exactly the plain ViT's tokens
        tokens = proj(images).flatten(2).transpose(1, 2) + pos
        idx = torch.arange(n_fine, device=images.device).expand(b, -1)
    elif n_split == 0:  # all coarse, in raster order (coarse candidates follow the fine ones)
        tokens = coarse if coarse is not None else proj(low).flatten(2).transpose(1, 2) + pos_coarse
        idx = torch.arange(n_fine, len(keys), device=images.device).expand(b, -1)
    else:
        split_fine = split.repeat_interleave(2, 1).repeat_interleave(2, 2).flatten(1)
        chosen = torch.cat([split_fine, ~split.flatten(1)], 1)  # (B, n_candidates)
        big = keys.max() + 1
        order = torch.argsort(torch.where(chosen, keys, big), dim=1, stable=True)
        n_tokens = int(chosen[0].sum())
        idx = order[:, :n_tokens]  # (B, T)
        # embed the chosen patches only: convolving the whole image and its half-size copy would
        # project every candidate, 4x the tokens at a fine ratio of 0.1 (~1 ms of a 33 ms forward)
        pixels = torch.cat([_patch_pixels(images, patch), _patch_pixels(low, patch)], 1)
        pixels = torch.gather(pixels, 1, idx.unsqueeze(-1).expand(-1, -1, pixels.shape[-1]))
        positions = torch.cat([pos, pos_coarse], 1).expand(b, -1, -1)
        positions = torch.gather(positions, 1, idx.unsqueeze(-1).expand(-1, -1, positions.shape[-1]))
        tokens = F.linear(pixels, proj.weight.flatten(1), proj.bias) + positions
        if logits is not None and torch.is_grad_enabled():
            m = straight_through(split.flatten(1), logits)  # 1 in value: the outputs are unchanged
            m_fine = m.view(b, gh // 2, gw // 2).repeat_interleave(2, 1).repeat_interleave(2, 2).flatten(1)
            tokens = tokens * torch.gather(torch.cat([m_fine, 1 - m], 1), 1, idx).unsqueeze(-1)
    prefix = prefix_tokens(vit).expand(b, -1, -1)
    region_score = torch.cat([score.repeat_interleave(2, 1).repeat_interleave(2, 2).flatten(1), score.flatten(1)], 1)
    layout = Layout(
        boxes=boxes[idx], scales=scales[idx], gate=torch.gather(region_score, 1, idx), size=(h, w),
        gate_logits=logits,
    )
    return vit.norm_pre(torch.cat([prefix, tokens], 1)), layout
