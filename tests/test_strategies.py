"""Token-reduction strategies (core.strategies): counts as configured, batch = single image, ToMe's
merging invariants and proportional attention, ATS against a reference written from the paper, and
the closed-form GFLOPs against torch's counter."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from adavit.core.config import AdaViTConfig, Settings
from adavit.core.model import AdaViT
from adavit.core.stages import run_stages, split_blocks
from adavit.core.strategies import ATS, STRATEGIES, inverse_transform_sampling, make
from adavit.core.strategies.tome import bipartite_soft_matching, merge_wavg, slot_windows, token_sizes
from adavit.measure.flops import count_flops, outcome_gflops

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = {
    "adavit": {"settings": Settings(0.5, 0.5, 0.5, "topk", True)},
    "resolution": {"size": (98, 112)},
    "random": {"keep": (0.5, 0.25), "split": (2, 4, 6)},
    "evit": {"keep": (0.5, 0.5)},
    "ats": {"keep": (0.6, 0.5)},
    "tome": {"r": 16},
}


def run(model, name, images):
    with torch.inference_mode():
        return make(name, **CASES[name]).forward(model, images)


def test_every_strategy_is_covered():
    assert set(CASES) == set(STRATEGIES)


@pytest.mark.parametrize("name, blocks", [
    # 256 patches + CLS; top-k keeps ceil(keep * n) patch tokens
    ("random", [257] * 2 + [129] * 4 + [33] * 6),
    # EViT: 128 kept + 1 fused; then ceil(0.5 * 129) = 65 kept + 1 fused
    ("evit", [257] * 4 + [130] * 4 + [67] * 4),
    ("resolution", [7 * 8 + 1] * 12),
    # ToMe: r tokens fewer after every block
    ("tome", [257 - 16 * i for i in range(12)]),
    # AdaViT at fine 0.5: 32 regions split into 4 + 32 coarse = 160 (+CLS); 80 kept + fused; 41 + fused
    ("adavit", [161] * 4 + [82] * 4 + [43] * 4),
])
def test_token_counts_as_configured(model, images, name, blocks):
    out = run(model, name, images)
    assert out.tokens_per_block.tolist() == [blocks] * len(images)


def test_ats_keeps_at_most_its_budget_and_adapts(peaked_model, images):
    out = run(peaked_model, "ats", images)
    counts = out.tokens_per_block
    assert (counts[:, 4] <= 1 + 154).all() and (counts[:, 4] >= 2).all()  # ceil(0.6 * 256) = 154
    assert len(set(counts[:, 4].tolist())) > 1  # inverse-transform sampling: the count depends on the image


@pytest.mark.parametrize("name", list(CASES))
def test_batch_equals_single_image(peaked_model, images, name):
    batch = run(peaked_model, name, images)
    for i in range(len(images)):
        one = run(peaked_model, name, images[i : i + 1])
        torch.testing.assert_close(batch.logits[i : i + 1], one.logits, atol=1e-4, rtol=1e-4)
        assert batch.tokens_per_block[i].tolist() == one.tokens_per_block[0].tolist()


@pytest.mark.parametrize("name", list(CASES))
def test_closed_form_gflops_equal_torch_counter(model, images, name):
    x = images[:1]
    strategy = make(name, **CASES[name])
    with torch.inference_mode():
        counted = count_flops(lambda: strategy.forward(model, x)) / 1e9
        assert outcome_gflops(model, strategy.forward(model, x))[0] == pytest.approx(counted, rel=1e-9)


# ---------------------------------------------------------------- ToMe
def test_tome_merging_preserves_total_size_and_mass():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 33, 8, generator=g, dtype=torch.float64)
    size = torch.ones(2, 33, 1, dtype=torch.float64)
    mass = (x * size).sum(1)
    for r in (8, 5, 100):  # 100 is clipped to (n - 1) // 2
        m = bipartite_soft_matching(torch.randn(x.shape, generator=g, dtype=torch.float64), r)
        n = x.shape[1]
        x, size = merge_wavg(m, x, size)
        assert x.shape[1] == n - min(r, (n - 1) // 2)
        assert size.sum(1).flatten().tolist() == [33.0, 33.0]
        torch.testing.assert_close((x * size).sum(1), mass)  # a size-weighted mean loses nothing
        assert (size[:, 0] == 1).all()  # CLS never merges and stays first


def test_tome_groups_cover_every_patch(model, images):
    out = run(model, "tome", images)
    n_final = int(out.tokens_per_block[0, -1]) - 16
    sizes = token_sizes(out.groups, n_final)
    assert sizes[:, 0].tolist() == [0] * len(images)  # no patch sits in CLS
    assert (sizes[:, 1:] >= 1).all() and sizes.sum(1).tolist() == [256] * len(images)


def test_proportional_attention_is_plain_attention_at_size_one(model):
    blk = model.vit.blocks[0]
    x = torch.randn(2, 10, model.vit.embed_dim)
    mask = torch.ones(2, 10, 1).log()[:, None, None, :, 0]
    with torch.inference_mode():
        torch.testing.assert_close(blk(x, attn_mask=mask), blk(x), atol=1e-6, rtol=1e-6)


def test_proportional_attention_equals_duplicated_tokens(model):
    """A token of size 2 attends and is attended like two identical copies of it (the point of log s)."""
    attn = model.vit.blocks[0].attn
    x = torch.randn(1, 6, model.vit.embed_dim)
    doubled = torch.cat([x, x[:, 3:4]], 1)  # token 3 twice
    size = torch.tensor([1.0, 1, 1, 2, 1, 1])
    mask = size.log()[None, None, None, :]
    with torch.inference_mode():
        torch.testing.assert_close(attn(x, attn_mask=mask), attn(doubled)[:, :6], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- ATS against the paper
def ats_reference(scores: np.ndarray, k: int) -> set[int]:
    """Fayyaz et al. 2022, Sec. 3.2, one image, loops only: ascending sort, CDF min-max normalised,
    K evenly spaced y from the smallest non-zero CDF value to 1, nearest CDF value, unique."""
    order = np.argsort(scores, kind="stable")
    cdf = np.cumsum(scores[order])
    ncdf = (cdf - cdf.min()) / (cdf.max() - cdf.min())
    start = min(c for c in ncdf if c > 0)
    ys = [1.0] if k == 1 else [start + i * (1 - start) / (k - 1) for i in range(k)]
    picked = set()
    for y in ys:
        best = min(range(len(ncdf)), key=lambda j: (abs(y - ncdf[j]), j))
        picked.add(int(order[best]))
    return picked


@pytest.mark.parametrize("keep", [0.1, 0.3, 0.5, 1.0])
def test_ats_equals_reference_from_the_paper(keep):
    g = torch.Generator().manual_seed(1)
    raw = torch.rand(4, 40, generator=g, dtype=torch.float64) ** 6  # peaked, as trained attention is
    scores = raw / raw.sum(1, keepdim=True)
    kept = inverse_transform_sampling(scores, torch.ones_like(scores, dtype=torch.bool), keep)
    k = int(np.ceil(40 * keep - 1e-9))
    for b in range(4):
        want = ats_reference(scores[b].numpy(), k)
        assert set(torch.nonzero(kept[b]).flatten().tolist()) == want
        assert len(want) <= k


def test_ats_ignores_padding():
    g = torch.Generator().manual_seed(2)
    scores = torch.rand(1, 12, generator=g, dtype=torch.float64) ** 4
    scores /= scores.sum()
    padded = torch.cat([scores, torch.zeros(1, 5, dtype=torch.float64)], 1)
    valid = torch.arange(17)[None] < 12
    a = inverse_transform_sampling(scores, torch.ones_like(scores, dtype=torch.bool), 0.5)
    b = inverse_transform_sampling(padded, valid, 0.5)
    assert b[:, 12:].sum() == 0 and torch.equal(a, b[:, :12])


def test_ats_strategy_uses_the_paper_sampler(peaked_model, images):
    out = run(peaked_model, "ats", images)
    sel = out.selections[0]
    want = inverse_transform_sampling(sel.scores, sel.valid, ATS(**CASES["ats"]).keep[0])
    assert torch.equal(sel.kept, want)


# ---------------------------------------------------------------- a hybrid (GC-ViT) checkpoint
def hybrid(model) -> AdaViT:
    """The same weights with stage 1 alternating 112 px windows and global attention."""
    return AdaViT(model.vit, AdaViTConfig(num_classes=10, windows=(112, 0, 0))).eval()


def test_block_windows_alternate_from_each_windowed_stage_start():
    assert AdaViTConfig(windows=(112, 0, 0)).block_windows == (112, 0, 112, 0) + (0,) * 8
    assert AdaViTConfig(stages=(3, 5, 4), windows=(0, 56, 0)).block_windows == (0,) * 3 + (56, 0, 56, 0, 56) + (0,) * 4


# every token, whatever stages the blocks are split into: each must be the hybrid network's full forward
EVERY_TOKEN = [("evit", {"keep": (1.0, 1.0)}), ("random", {"keep": (1.0, 1.0), "split": (1, 3, 8)}),
               ("random", {"keep": (1.0, 1.0), "split": (3, 6, 3)}), ("tome", {"r": 0}),
               ("resolution", {"size": (224, 224)})]


@pytest.mark.parametrize("name, settings", EVERY_TOKEN)
def test_every_strategy_runs_the_checkpoints_own_windows(model, images, name, settings):
    net = hybrid(model)
    with torch.inference_mode():
        want = net(images[:2], Settings.full()).logits
        got = make(name, **settings).forward(net, images[:2]).logits
        global_only = make(name, **settings).forward(model, images[:2]).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (global_only - want).abs().max() > 1e-3  # the windows do change the network


@pytest.mark.parametrize("name", ["evit", "tome", "ats"])
def test_a_hybrid_checkpoint_batch_equals_single_image(peaked_model, images, name):
    net = hybrid(peaked_model)
    with torch.inference_mode():
        batch = make(name, **CASES[name]).forward(net, images)
        for i in range(len(images)):
            one = make(name, **CASES[name]).forward(net, images[i : i + 1])
            torch.testing.assert_close(batch.logits[i : i + 1], one.logits, atol=1e-4, rtol=1e-4)


def test_a_merged_token_keeps_its_window_only_while_it_lies_in_one():
    ids = torch.tensor([[0, 0, 1, 1, 1]])  # the windows of five stage-0 tokens
    assert slot_windows(ids, torch.tensor([[1, 1, 2, 3, 3]]), 4).tolist() == [[0, 1, 1]]
    assert slot_windows(ids, torch.tensor([[1, 2, 2, 3, 3]]), 4).tolist() == [[0, -1, 1]]  # slot 2 spans two


def test_windows_need_one_entry_per_block_and_the_boxes(model, images):
    tokens, layout = model.tokenize(images[:1], 1.0)
    stages = split_blocks(list(model.vit.blocks), (4, 4, 4))
    with pytest.raises(ValueError, match="one entry per block \\(12\\), got 3"):
        run_stages(stages, tokens, Settings().sampling, windows=(112, 0, 0), boxes=layout.boxes, width=224)
    with pytest.raises(ValueError, match="need the tokens' boxes"):
        run_stages(stages, tokens, Settings().sampling, windows=(112,) + (0,) * 11)


# ---------------------------------------------------------------- bad settings
@pytest.mark.parametrize("name, settings, message", [
    ("resolution", {"size": (2000, 100)}, "between 1 and 1008"),
    ("tome", {"r": -1}, "non-negative"),
    ("nope", {}, "unknown strategy"),
])
def test_bad_settings_say_what_to_do(name, settings, message):
    with pytest.raises(ValueError, match=message):
        make(name, **settings)


def test_bad_split_says_what_to_do(model, images):
    with pytest.raises(ValueError, match="add up to"):
        make("evit", split=(4, 4, 5)).forward(model, images[:1])


def test_resolution_side_must_be_whole_patches_of_the_model(model, images):
    with pytest.raises(ValueError, match="multiple of 14 px"):
        make("resolution", size=(100, 100)).forward(model, images)
