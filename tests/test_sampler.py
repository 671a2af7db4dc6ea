"""ATS on synthetic tensors: budgets, top-k / inverse-transform selection, gathering, fusion, scores."""
from __future__ import annotations

import math

import pytest
import torch
from timm.layers import Attention

from adavit.core.sampler import FUSED, PAD, Tokens, budget, ceil_tokens, reduce, select, significance


def _tokens(b: int, n: int, d: int = 4, seed: int = 0, valid: torch.Tensor | None = None) -> Tokens:
    g = torch.Generator().manual_seed(seed)
    return Tokens(torch.randn(b, 1 + n, d, generator=g), torch.arange(n).expand(b, -1).clone(), valid)


def test_budget_is_ceil_with_float_guard():
    valid = torch.ones(1, 10, dtype=torch.bool)
    assert budget(valid, 0.3).item() == 3  # 0.3 * 10 = 3.0000000000000004 in floats
    assert budget(valid, 0.31).item() == 4
    assert budget(valid, 1e-6).item() == 1  # at least one token
    assert budget(valid, 1.0).item() == 10
    assert [ceil_tokens(10, k) for k in (0.3, 0.31, 1e-6, 1.0)] == [3, 4, 1, 10]


def test_topk_keeps_the_highest_scores_of_valid_tokens():
    scores = torch.tensor([[0.1, 0.4, 0.2, 0.3, 0.0], [0.5, 0.1, 0.1, 0.3, 0.0]])
    valid = torch.tensor([[True] * 5, [True, True, True, True, False]])
    kept = select(scores, valid, 0.5, "topk")
    assert kept.tolist() == [[False, True, True, True, False], [True, False, False, True, False]]


def test_sample_keeps_at_most_the_budget_and_favours_mass():
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(64, 50, generator=g) ** 8  # peaked: a few tokens hold most of the mass
    scores = scores / scores.sum(1, keepdim=True)
    valid = torch.ones_like(scores, dtype=torch.bool)
    for keep in (0.1, 0.5, 1.0):
        kept = select(scores, valid, keep, "sample")
        assert (kept.sum(1) <= math.ceil(keep * 50)).all()
        assert (kept.sum(1) >= 1).all()
        if keep >= 0.5:  # the first draw u = 0.5/k <= 1/n <= the largest score: the heaviest token
            assert kept[torch.arange(64), scores.argmax(1)].all()
    assert (select(scores, valid, 0.5, "sample").sum(1) < 25).any()  # duplicates: fewer than the budget


def test_sample_never_picks_padding():
    scores = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    valid = torch.tensor([[True, True, False, False]])
    kept = select(scores, valid, 1.0, "sample")
    assert kept.tolist() == [[True, True, False, False]]


def test_reduce_keeps_order_and_pads_shorter_images():
    tokens = _tokens(2, 6)
    scores = torch.tensor([[0.3, 0.0, 0.2, 0.0, 0.5, 0.0], [0.9, 0.02, 0.02, 0.02, 0.02, 0.02]])
    out, sel = reduce(tokens, scores, 0.5, "sample", fuse=False)
    k0 = sel.kept[0].nonzero().flatten()
    assert torch.equal(out.x[0, 1:len(k0) + 1], tokens.x[0, 1 + k0])  # original order kept
    assert torch.equal(out.x[:, 0], tokens.x[:, 0])  # CLS untouched
    counts = sel.kept.sum(1)
    assert counts[1] < counts[0]  # image 1's mass sits on one token: sampling keeps fewer
    assert out.valid is not None and out.valid.sum(1).tolist() == counts.tolist()
    assert (out.src[~out.valid] == PAD).all()
    assert out.counts.tolist() == (counts + 1).tolist()


def test_fused_token_is_the_score_weighted_mean_of_the_dropped():
    tokens = _tokens(1, 5)
    scores = torch.tensor([[0.4, 0.1, 0.3, 0.15, 0.05]])
    out, sel = reduce(tokens, scores, 0.4, "topk", fuse=True)
    assert sel.kept.tolist() == [[True, False, True, False, False]]
    dropped = torch.tensor([1, 3, 4])
    w = scores[0, dropped]
    want = (w[:, None] * tokens.x[0, 1 + dropped]).sum(0) / w.sum()
    assert torch.allclose(out.x[0, 3], want, atol=1e-6)
    assert out.src.tolist() == [[0, 2, FUSED]]
    assert sel.fused.tolist() == [[False, True, False, True, True]]


def test_fused_token_only_when_something_is_dropped():
    tokens = _tokens(2, 4)
    scores = torch.full((2, 4), 0.25)
    out, sel = reduce(tokens, scores, 1.0, "topk", fuse=True)
    assert torch.equal(out.x, tokens.x) and out.valid is None and not sel.fused.any()
    out, sel = reduce(tokens, scores, 0.5, "topk", fuse=False)
    assert not (out.src == FUSED).any()


def test_significance_sums_to_one_and_ignores_padding():
    torch.manual_seed(0)
    attn = Attention(16, num_heads=2, qkv_bias=True).eval()
    valid = torch.tensor([[True] * 6, [True, True, True, False, False, False]])
    tokens = _tokens(2, 6, d=16, valid=valid)
    with torch.no_grad():
        s = significance(attn.qkv(tokens.x), attn, tokens)
    assert torch.allclose(s.sum(1), torch.ones(2))
    assert (s[~valid] == 0).all() and (s[valid] > 0).all()
    # padding changes nothing: image 1 scored alone, on its 3 valid tokens only
    alone = Tokens(tokens.x[1:2, :4], tokens.src[1:2, :3], None)
    with torch.no_grad():
        s1 = significance(attn.qkv(alone.x), attn, alone)
    assert torch.allclose(s[1, :3], s1[0], atol=1e-6)


@pytest.mark.parametrize("mode", ["topk", "sample"])
def test_one_of_two_keeps_the_better_one(mode):
    scores = torch.tensor([[0.2, 0.8]])
    kept = select(scores, torch.tensor([[True, True]]), 0.5, mode)
    assert kept.tolist() == [[False, True]]
