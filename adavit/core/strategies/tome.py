"""ToMe (Bolya et al., ICLR 2023): bipartite soft matching merges r tokens per block.

Written from the paper and its official code (facebookresearch/ToMe, tome/merge.py):
- the metric is the block's keys averaged over heads, cosine-normalised;
- tokens alternate into sets A and B; each A token's most similar B token is its edge; the r
  most similar edges merge (CLS never does), the merged A tokens leave;
- merging is a size-weighted mean, and each token's size (how many patches it holds) is tracked;
- proportional attention: log(size) is added to every attention logit of that key, so a token that
  stands for s patches weighs like s of them. It goes into timm's blocks as a float `attn_mask`
  (added to the logits by scaled_dot_product_attention): no timm forward is copied.
The official code merges inside each block, between attention and MLP; timm's `Block.forward` has
no seam there, so here a block's keys are caught with a hook on `attn.qkv` and its tokens merge
right after it: block i's MLP still runs on the unmerged tokens (slightly more compute, counted).
Prefix tokens beyond CLS (registers, a distillation token) sit out of the matching: they are
put back after CLS for every block and never merge, so one CLS token matches exactly as in ToMe.
A hybrid checkpoint's local blocks keep their windows: a merged token stays in its window while all
it holds lies in one, and attends globally once it spans several (as a fused token does in AdaViT).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attention import local_window_mask, window_ids
from ..patching import patch_size
from ..sampler import Tokens
from ..stages import _scores_hook
from .base import Outcome, embedded


def _without(x: torch.Tensor, p: int) -> torch.Tensor:
    """x without the prefix tokens after CLS (slots 1 .. p-1)."""
    return torch.cat([x[:, :1], x[:, p:]], 1) if p > 1 else x


def _with(x: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
    return torch.cat([x[:, :1], extra, x[:, 1:]], 1) if extra.shape[1] else x


@dataclass
class Merge:
    """One matching: which tokens of x (B, N, D) leave and where each one goes."""

    unm: torch.Tensor  # (B, N_A - r) indices into set A that stay (sorted: CLS first)
    src: torch.Tensor  # (B, r) indices into set A that merge
    dst: torch.Tensor  # (B, r) the set-B index each of them merges into

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Sum-merge: [unmerged A tokens, B tokens with their merged A tokens added]."""
        a, b = x[:, ::2], x[:, 1::2]
        d = x.shape[-1]
        unm = a.gather(1, self.unm[..., None].expand(-1, -1, d))
        src = a.gather(1, self.src[..., None].expand(-1, -1, d))
        b = b.scatter_reduce(1, self.dst[..., None].expand(-1, -1, d), src, reduce="sum")
        return torch.cat([unm, b], 1)

    def slots(self, n: int) -> torch.Tensor:
        """(B, n): the new slot of every old slot."""
        bsz, n_unm = self.unm.shape
        new = torch.empty(bsz, n, dtype=torch.long, device=self.unm.device)
        a_slots, b_slots = torch.arange(0, n, 2, device=new.device), torch.arange(1, n, 2, device=new.device)
        new[:, b_slots] = n_unm + torch.arange(len(b_slots), device=new.device)
        new.scatter_(1, a_slots[self.unm], torch.arange(n_unm, device=new.device).expand(bsz, -1))
        new.scatter_(1, a_slots[self.src], n_unm + self.dst)
        return new


def bipartite_soft_matching(metric: torch.Tensor, r: int) -> Merge:
    """ToMe's matching on metric (B, N, C), token 0 = CLS protected; r is clipped to (N - 1) // 2."""
    r = min(r, (metric.shape[1] - 1) // 2)
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[:, ::2], metric[:, 1::2]
    scores = a @ b.transpose(-1, -2)
    scores[:, 0, :] = float("-inf")  # CLS is in A and never merges
    node_max, node_idx = scores.max(dim=-1)
    edge_idx = node_max.argsort(dim=-1, descending=True)
    unm = edge_idx[:, r:].sort(dim=1).values  # keep the original order, CLS first
    src = edge_idx[:, :r]
    return Merge(unm, src, node_idx.gather(1, src))


def merge_wavg(m: Merge, x: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted average merge: x (B, N, D), size (B, N, 1) -> the merged pair."""
    x = m.apply(x * size)
    size = m.apply(size)
    return x / size, size


def proportional_mask(size: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, 1, 1, N) log(size) added to the attention logits of each key; None when every size is 1."""
    if bool((size == 1).all()):
        return None
    return size.log().to(dtype)[:, None, None, :, 0]


def slot_windows(ids: torch.Tensor, slot: torch.Tensor, n: int) -> torch.Tensor:
    """(B, n - 1) the window of each patch slot of x (slot 0, CLS, left out) from the stage-0 tokens'
    windows `ids` (B, T) and their slots `slot` (B, T): the one window its tokens share, else -1."""
    lo = ids.new_full((ids.shape[0], n), torch.iinfo(ids.dtype).max).scatter_reduce(1, slot, ids, "amin")
    hi = ids.new_full((ids.shape[0], n), -1).scatter_reduce(1, slot, ids, "amax")
    return torch.where(lo == hi, lo, -1)[:, 1:]


def keys(qkv: torch.Tensor, attn) -> torch.Tensor:
    """The block's keys averaged over heads (B, N, head_dim): ToMe's similarity metric."""
    b, n, _ = qkv.shape
    k = qkv.reshape(b, n, 3, attn.num_heads, attn.head_dim)[:, :, 1]
    return attn.k_norm(k).mean(2)


@dataclass(frozen=True)
class ToMe:
    r: int = 16  # tokens merged after every block
    name = "tome"

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or self.r < 0:
            raise ValueError(f"ToMe's r (tokens merged per block) must be a non-negative integer, got {self.r!r}")

    def forward(self, model, images: torch.Tensor) -> Outcome:
        tokens, layout = model.tokenize(images, 1.0)
        p = tokens.num_prefix
        extra, x = tokens.x[:, 1:p], _without(tokens.x, p)
        bsz, n = x.shape[:2]
        size = torch.ones(bsz, n, 1, dtype=x.dtype, device=x.device)
        slot = torch.arange(1, n, device=x.device).expand(bsz, -1)  # stage-0 token -> slot of x (CLS = 0)
        counts, merges = [], []
        centres = (layout.boxes[..., :2] + layout.boxes[..., 2:]) / 2
        for blk, window in zip(model.vit.blocks, model.config.block_windows, strict=True):
            counts.append(x.shape[1] + extra.shape[1])
            sink: list[torch.Tensor] = []
            hook = _scores_hook(blk, sink)
            try:
                mask = proportional_mask(_with(size, torch.ones_like(size[:, 1:p])), x.dtype)
                if window:
                    ids = slot_windows(window_ids(centres, window, layout.size[1]), slot, x.shape[1])
                    local = local_window_mask(ids, p, None)
                    mask = local if mask is None else torch.where(local, mask, float("-inf"))
                full = _with(x, extra)
                full = blk(full) if mask is None else blk(full, attn_mask=mask)
            finally:
                hook.remove()
            extra, x = full[:, 1:p], _without(full, p)
            if self.r and x.shape[1] > 2:
                merges.append(x.shape[1])  # the matching sees the tokens that may merge
                m = bipartite_soft_matching(_without(keys(sink[-1], blk.attn), p), self.r)
                slot = m.slots(x.shape[1]).gather(1, slot)
                x, size = merge_wavg(m, x, size)
        x = _with(x, extra)
        out = Tokens(x, torch.arange(x.shape[1] - p, device=x.device).expand(bsz, -1), None, p)
        return Outcome(
            logits=model.classify(out), tokens_per_block=torch.tensor(counts).expand(bsz, -1), layout=layout,
            embedded=embedded(layout, patch_size(model.vit)),
            merges=torch.tensor(merges).expand(bsz, -1) if merges else None,
            groups=slot, image_size=layout.size,
        )


def token_sizes(groups: torch.Tensor, n_slots: int) -> torch.Tensor:
    """(B, n_slots) how many stage-0 tokens each final slot holds (CLS slot 0 holds none)."""
    return torch.zeros(groups.shape[0], n_slots, dtype=torch.long).scatter_add_(
        1, groups.cpu(), torch.ones_like(groups.cpu()))
