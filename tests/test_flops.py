"""FLOPs: torch's counter sees CPU attention, and the closed form equals it exactly."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adavit.core.config import Settings
from adavit.core.stages import run_stage
from adavit.measure import flops


def test_counter_counts_cpu_attention():
    q, k, v = (torch.randn(2, 6, 50, 64) for _ in range(3))
    mask = torch.ones(2, 1, 1, 50, dtype=torch.bool)
    for kwargs in ({}, {"attn_mask": mask}):
        with torch.inference_mode():
            n = flops.count_flops(lambda kw=kwargs: F.scaled_dot_product_attention(q, k, v, **kw))
        assert n == 2 * (2 * 2 * 6 * 50 * 50 * 64)  # QK^T and AV, 2 FLOPs per multiply-add


def test_counter_counts_linear_as_two_flops_per_mac():
    lin = torch.nn.Linear(384, 1152)
    with torch.inference_mode():
        assert flops.count_flops(lambda: lin(torch.zeros(1, 7, 384))) == 2 * 7 * 384 * 1152
    assert "2 x multiply-adds" in flops.CONVENTION


def test_block_formula_matches_the_counter(model):
    d = model.vit.embed_dim
    blk = model.vit.blocks[0]
    for n in (2, 29, 257):
        with torch.inference_mode():
            counted = flops.count_flops(lambda n=n: blk(torch.zeros(1, n, d)))
        assert counted == flops.block_flops(n, d, blk.mlp.fc1.out_features)


CASES = [
    (224, Settings(fine_ratio=0.5)),
    (224, Settings(fine_ratio=0.0, keep1=0.7, keep2=0.3, mode="sample")),
    (224, Settings(fine_ratio=1.0, keep1=0.4, keep2=0.6, fuse=True)),
    (224, Settings.full()),
    (280, Settings(fine_ratio=0.5, keep1=0.5, keep2=0.5, mode="sample", fuse=True, resolution=280)),
    (280, Settings(fine_ratio=0.0, keep1=1.0, keep2=0.2, fuse=True, resolution=280)),
    (280, Settings(fine_ratio=1.0, keep1=0.3, keep2=1.0, mode="sample", resolution=280)),
]


@pytest.mark.parametrize("res, settings", CASES)
def test_closed_form_equals_the_counter(peaked_model, make_images, res, settings):
    x = make_images(1, res, res, seed=res)
    out = {}
    with torch.inference_mode():
        counted = flops.count_flops(lambda: out.setdefault("pred", peaked_model(x, settings)))
    pred = out["pred"]
    arch = flops.Arch.of(peaked_model)
    fused = [bool(s.fused.any()) for s in pred.selections]
    closed = flops.adavit_flops(arch, (res, res), pred.tokens_per_stage[0].tolist(),
                                fine=bool((pred.layout.scales == 1).any()),
                                coarse=bool((pred.layout.scales == 2).any()), fused=fused)
    assert closed == counted
    assert flops.image_gflops(peaked_model, pred)[0] * 1e9 == pytest.approx(counted, rel=1e-12)


def test_per_image_gflops_in_a_padded_batch(peaked_model, images):
    """Sample mode: each image's number is its own batch-1 count, not the padded batch's share."""
    s = Settings(fine_ratio=0.3, keep1=0.5, keep2=0.5, mode="sample", fuse=True)
    with torch.inference_mode():
        pred = peaked_model(images, s)
        per_image = flops.image_gflops(peaked_model, pred)
        alone = [flops.count_flops(lambda i=i: peaked_model(images[i:i + 1], s)) / 1e9 for i in range(len(images))]
    assert len(set(map(tuple, pred.tokens_per_stage.tolist()))) > 1  # counts really differ
    assert np.allclose(per_image, alone, rtol=1e-12, atol=0)


def test_plain_vit_formula_matches_timm(model):
    from adavit.measure.bench import plain_vit

    plain = plain_vit(model, 224)
    with torch.inference_mode():
        counted = flops.count_flops(lambda: plain(torch.zeros(1, 3, 224, 224)))
    d = plain.embed_dim
    assert counted == flops.vit_flops([257] * 12, d, 4.0, 256, head=(d, 10))


def test_stage_flops_are_quadratic_in_tokens(model):
    """What appbench's per-piece counter assumes: a stage's FLOPs are a quadratic in n."""
    stage = model.stages[1]
    d = model.vit.embed_dim

    def count(n):
        from adavit.core.sampler import Tokens

        tokens = Tokens(torch.zeros(1, n, d), torch.arange(n - 1)[None], None)
        with torch.inference_mode():
            return flops.count_flops(lambda: run_stage(stage, tokens, score=True))

    hidden = stage[0].mlp.fc1.out_features
    for n in (3, 40):
        assert count(n) == 4 * flops.block_flops(n, d, hidden) + 2 * d * n


def test_summarize():
    s = flops.summarize([1.0, 2.0, 3.0, 4.0, 10.0])
    assert s == {"mean": 4.0, "std": pytest.approx(np.std([1, 2, 3, 4, 10])), "min": 1.0, "p50": 3.0,
                 "p90": pytest.approx(7.6), "max": 10.0}
    assert flops.summarize([]) == {}


@pytest.fixture(scope="module")
def learned_model(model):
    """The test model with a learned gate and learned scorers (random MLPs: the cost is what counts)."""
    from adavit.core.config import AdaViTConfig
    from adavit.core.model import AdaViT

    torch.manual_seed(0)
    m = AdaViT.create(AdaViTConfig(num_classes=10, gate="learned", scorer="learned"))
    m.vit.load_state_dict(model.vit.state_dict())
    return m.eval()


@pytest.mark.parametrize("settings", [
    Settings(fine_ratio=0.5),
    Settings(fine_ratio=0.3, keep1=0.6, keep2=0.4, mode="sample", fuse=True),
    Settings(fine_ratio=1.0, keep1=0.5, keep2=0.5),  # every region splits: the gate is skipped
    Settings(fine_ratio=0.0, keep1=0.7, keep2=0.3),  # none does: skipped too
])
def test_closed_form_counts_the_learned_gate_and_scorers(learned_model, make_images, settings):
    from adavit.core.strategies import make

    x = make_images(1, 224, 224, seed=3)
    out = {}
    with torch.inference_mode():
        counted = flops.count_flops(lambda: out.setdefault("pred", learned_model(x, settings)))
        outcome = make("adavit", settings=settings).forward(learned_model, x)
    arch = flops.Arch.of(learned_model)
    assert arch.gate_macs == 384 * 96 + 96 * 96 * 2 + 96  # MSViT's 4-layer MLP
    assert arch.scorer_macs == (384 * 384 + 384 * 192 + 192 * 96 + 96,) * 2  # DynamicViT's, per sampler
    assert flops.image_gflops(learned_model, out["pred"])[0] * 1e9 == pytest.approx(counted, rel=1e-12)
    assert outcome.learned_scores
    assert flops.outcome_gflops(learned_model, outcome)[0] * 1e9 == pytest.approx(counted, rel=1e-12)
    mixed = 0 < settings.fine_ratio < 1
    no_gate = flops.adavit_flops(replace(arch, gate_macs=0), (224, 224), out["pred"].tokens_per_stage[0].tolist(),
                                 fine=settings.fine_ratio > 0, coarse=settings.fine_ratio < 1,
                                 fused=[bool(s.fused.any()) for s in out["pred"].selections])
    # the gate's MLP on 64 regions at 224 px, and the 64 coarse embeddings it reads (a 14x14x3 -> 384 projection)
    assert counted - no_gate == (2 * 64 * (arch.gate_macs + 14 * 14 * 3 * 384) if mixed else 0)


def test_peers_on_a_learned_checkpoint_pay_for_the_attention_score(learned_model, make_images):
    """EViT scores by CLS attention even when the checkpoint has learned scorers; so does its count."""
    from adavit.core.strategies import make

    x = make_images(1, 224, 224, seed=4)
    evit = make("evit", keep=(0.5, 0.5))
    with torch.inference_mode():
        counted = flops.count_flops(lambda: evit.forward(learned_model, x))
        outcome = evit.forward(learned_model, x)
    assert not outcome.learned_scores
    assert flops.outcome_gflops(learned_model, outcome)[0] * 1e9 == pytest.approx(counted, rel=1e-12)


def test_compare_cache_is_keyed_by_the_cost_model(tmp_path, monkeypatch):
    """Cached GFLOPs from an older closed form must not be reused: the fingerprint changes with it."""
    from adavit.measure import compare

    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"weights")
    split = compare.Split(torch.zeros(4, 3, 32, 32), np.arange(4), np.array([0, 2]), np.array([1, 3]), ("a",) * 4)
    before = compare.fingerprint(weights, split)
    assert compare.fingerprint(weights, split) == before
    monkeypatch.setattr(compare, "COST_MODEL", flops.COST_MODEL + 1)
    assert compare.fingerprint(weights, split) != before
