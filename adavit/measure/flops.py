"""FLOPs: torch's own counter for any forward, and an exact closed form for per-image numbers.

Convention: FLOPs = 2 x multiply-adds (MACs), as `torch.utils.flop_counter` counts them; a GFLOP is
1e9 FLOPs. Only matrix products are counted: linear layers, convolutions, attention (QK^T and AV)
and einsums. Norms, activations, softmax, gathers and resampling are not, here as in the counter.
Papers' "GFLOPs" are usually MACs: halve our numbers to compare with them.

On CPU, `scaled_dot_product_attention` runs as `aten._scaled_dot_product_flash_attention_for_cpu`,
which torch's registry does not know (it counts the CUDA kernels only), so attention would count as
zero. `counter()` registers that op (and its backward) with torch's own SDPA formulas.

The closed form (`vit_flops`, `adavit_flops`) exists because in sample mode token counts differ per
image: a batch is padded to its longest image, so counting the batch says nothing about one image.
It is what the counter reports for the same image run alone (batch 1); tests/test_flops.py checks
that equality for topk, sample, fuse, fine ratios 0 / 0.5 / 1, two resolutions, and a checkpoint
with the learned gate and learned scorers (their MLPs are matrix products too).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from ..core.config import PATCH
from ..core.patching import patch_embeddings

# the closed form's version: caches of per-point GFLOPs (measure.compare) are keyed by it, so a
# change to what is counted recomputes them instead of mixing two cost models in one table
COST_MODEL = 3  # 2: the learned gate and scorers' MLPs are counted; 3: a mixed layout embeds its tokens only

CONVENTION = "FLOPs = 2 x multiply-adds (torch.utils.flop_counter; matmuls, convs and attention only)"

_aten = torch.ops.aten


def _sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _sdpa_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


CPU_ATTENTION = {
    _aten._scaled_dot_product_flash_attention_for_cpu: _sdpa,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_backward,
}


def counter() -> FlopCounterMode:
    """torch's FlopCounterMode that also counts CPU attention (see the module docstring)."""
    return FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (2 x MACs) of everything `fn()` runs, counted by torch; call it under inference_mode
    or no_grad yourself if you want the forward alone."""
    with counter() as c:
        fn()
    return int(c.get_total_flops())


# ---------------------------------------------------------------- the closed form


def block_flops(n: int, dim: int, hidden: int, attn_dim: int | None = None) -> int:
    """One pre-norm transformer block on n tokens: qkv, attention, proj, MLP (2 x MACs)."""
    a = dim if attn_dim is None else attn_dim
    linear = n * (dim * 3 * a + a * dim + 2 * dim * hidden)
    attention = 2 * n * n * a  # QK^T and AV, summed over heads
    return 2 * (linear + attention)


def vit_flops(
    tokens_per_block: Sequence[int],
    dim: int,
    mlp_ratio: float = 4.0,
    patch_tokens: int = 0,
    *,
    patch: int = PATCH,
    in_chans: int = 3,
    head: tuple[int, int] | None = None,
    attn_dim: int | None = None,
) -> int:
    """A ViT forward at batch 1: `patch_tokens` patch embeddings (a patch x patch conv each),
    one block per entry of `tokens_per_block` (CLS included), and a linear head (in, out)."""
    hidden = int(round(dim * mlp_ratio))
    flops = 2 * patch_tokens * in_chans * patch * patch * dim
    flops += sum(block_flops(int(n), dim, hidden, attn_dim) for n in tokens_per_block)
    if head is not None:
        flops += 2 * head[0] * head[1]
    return flops


def linear_macs(module: nn.Module | None) -> int:
    """Multiply-adds of one token through every Linear in `module` (MLPs applied token-wise)."""
    if module is None:
        return 0
    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


@dataclass(frozen=True)
class Arch:
    """The widths that fix an AdaViT's FLOPs (read from the timm modules, not assumed)."""

    dim: int
    attn_dim: int
    hidden: int
    patch: int
    in_chans: int
    head: tuple[int, int] | None  # (in, out) of the linear head; None when it is not a Linear
    stages: tuple[int, ...]  # blocks per stage
    prefix: int = 1  # CLS and any register / distillation tokens
    gate_macs: int = 0  # per region, a learned gate's MLP (0: the parameter-free detail score)
    scorer_macs: tuple[int, ...] = ()  # per patch token at each sampler, learned scorers (): ATS's score

    @classmethod
    def of(cls, model) -> Arch:
        vit = model.vit
        blk = vit.blocks[0]
        proj = vit.patch_embed.proj
        head = vit.head
        scorers = getattr(model, "scorers", None) or ()
        return cls(
            dim=int(vit.embed_dim),
            attn_dim=int(blk.attn.proj.in_features),
            hidden=int(blk.mlp.fc1.out_features),
            patch=int(proj.kernel_size[0]),
            in_chans=int(proj.in_channels),
            head=(int(head.in_features), int(head.out_features)) if isinstance(head, nn.Linear) else None,
            stages=tuple(model.config.stages),
            prefix=int(model.num_prefix),
            gate_macs=linear_macs(getattr(model, "gate", None)),
            scorer_macs=tuple(linear_macs(s) for s in scorers),
        )

    def gate(self, grid: int, fine: bool, coarse: bool) -> int:
        """The learned gate's FLOPs: every region, when the layout mixes scales (else it is skipped)."""
        return 2 * (grid // 4) * self.gate_macs if fine and coarse else 0

    def score(self, s: int, n: int, learned: bool = True) -> int:
        """Scoring n tokens (prefix included) at sampler s: a learned scorer's MLP on the patch
        tokens, or ATS / EViT's CLS query . every key, all heads (an einsum)."""
        if learned and self.scorer_macs:
            return 2 * (int(n) - self.prefix) * self.scorer_macs[s]
        return 2 * self.attn_dim * int(n)


def adavit_flops(
    arch: Arch,
    size: tuple[int, int],
    tokens_per_stage: Sequence[int],
    *,
    fine: bool,
    coarse: bool,
    fused: Sequence[bool] = (),
) -> int:
    """One image through AdaViT, exactly as the counter counts its batch-1 forward.

    size: model input (H, W). tokens_per_stage: tokens (CLS included) each stage ran on.
    fine / coarse: whether the image has any fine (one patch) / coarse (2x2-patch region) token; a
    mixed layout embeds its own tokens only (core.patching.patch_embeddings). fused[s]: sampler s
    built a fused token.
    """
    h, w = size
    grid = (h // arch.patch) * (w // arch.patch)
    patch_tokens = patch_embeddings(grid, int(tokens_per_stage[0]) - arch.prefix, fine, coarse, arch.gate_macs > 0)
    per_block = [int(n) for n, blocks in zip(tokens_per_stage, arch.stages, strict=True) for _ in range(blocks)]
    flops = vit_flops(per_block, arch.dim, arch.hidden / arch.dim, patch_tokens, patch=arch.patch,
                      in_chans=arch.in_chans, head=arch.head, attn_dim=arch.attn_dim)
    flops += arch.gate(grid, fine, coarse)
    for s, n in enumerate(tokens_per_stage[:-1]):
        flops += arch.score(s, n)
        if s < len(fused) and fused[s]:
            flops += 2 * (int(n) - 1) * arch.dim  # the fused token: score-weighted sum of patch tokens
    return flops


def image_gflops(model, prediction) -> np.ndarray:
    """(B,) GFLOPs of each image of a batch, as if each ran alone (padding is not paid for)."""
    arch = Arch.of(model)
    counts = prediction.tokens_per_stage.detach().cpu().numpy()
    scales = prediction.layout.scales.detach().cpu().numpy()
    fused = np.stack([s.fused.detach().cpu().numpy().any(1) for s in prediction.selections], 1) \
        if prediction.selections else np.zeros((len(counts), 0), bool)
    return np.array([
        adavit_flops(arch, prediction.layout.size, counts[b].tolist(), fine=bool((scales[b] == 1).any()),
                     coarse=bool((scales[b] == 2).any()), fused=fused[b].tolist()) / 1e9
        for b in range(len(counts))
    ])


def summarize(values) -> dict[str, float]:
    """mean, std (population), min, p50, p90, max of a 1-D set of numbers; {} when it is empty."""
    v = np.asarray(values, np.float64).reshape(-1)
    if not len(v):
        return {}
    p50, p90 = np.percentile(v, [50, 90])
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "p50": float(p50),
            "p90": float(p90), "max": float(v.max())}


def outcome_gflops(model, outcome) -> np.ndarray:
    """(B,) GFLOPs of each image under any strategy (core.strategies.Outcome), as if run alone.

    The blocks at their per-block token counts, the patch embeddings that ran and the head, plus what
    the strategies add: the learned gate on mixed-scale layouts, scores per sampler (AdaViT's learned
    scorers, or ATS/EViT's CLS query . keys), fused tokens, and ToMe's bipartite similarity matrix
    (ceil(n/2) x floor(n/2) dot products of head_dim) per matching.
    """
    arch = Arch.of(model)
    head_dim = int(model.vit.blocks[0].attn.head_dim)
    per_block = outcome.tokens_per_block.detach().cpu().numpy()
    embedded = outcome.embedded.detach().cpu().numpy()
    scales = outcome.layout.scales.detach().cpu().numpy()
    h, w = outcome.layout.size
    grid = (h // arch.patch) * (w // arch.patch)
    scored = None if outcome.scored is None else outcome.scored.detach().cpu().numpy()
    fused = None if outcome.fused is None else outcome.fused.detach().cpu().numpy()
    merges = None if outcome.merges is None else outcome.merges.detach().cpu().numpy()
    out = []
    for b in range(len(per_block)):
        f = vit_flops(per_block[b].tolist(), arch.dim, arch.hidden / arch.dim, int(embedded[b]), patch=arch.patch,
                      in_chans=arch.in_chans, head=arch.head, attn_dim=arch.attn_dim)
        f += arch.gate(grid, bool((scales[b] == 1).any()), bool((scales[b] == 2).any()))
        if scored is not None:
            f += sum(arch.score(s, n, outcome.learned_scores) + (2 * (int(n) - 1) * arch.dim if fz else 0)
                     for s, (n, fz) in enumerate(zip(scored[b], fused[b], strict=True)))
        if merges is not None:
            f += sum(2 * ((int(n) + 1) // 2) * (int(n) // 2) * head_dim for n in merges[b])
        out.append(f / 1e9)
    return np.array(out)
