"""The learned token scorer (DynamicViT's MLP) beside ATS's score: the same samplers, caches and gradients."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from adavit.core.config import AdaViTConfig, Settings
from adavit.core.model import AdaViT
from adavit.core.scorer import LearnedScorer
from adavit.measure.cache import run_from_stage1, run_from_stage2, stage1_cache, stage2_cache
from adavit.weights import checkpoint

SETTINGS = [Settings(0.3, 0.5, 0.5), Settings(0.5, 0.4, 0.6, "sample", True)]


@pytest.fixture(scope="module")
def scored(layer_scale) -> AdaViT:
    torch.manual_seed(0)
    m = AdaViT.create(AdaViTConfig(num_classes=10, scorer="learned"))
    layer_scale(m.vit)
    with torch.no_grad():  # peaked scores, as a trained scorer has, so sample mode keeps different counts
        for s in m.scorers:
            s.mlp[-1].weight.mul_(50)
    return m


@pytest.fixture(scope="module")
def pics(make_images) -> torch.Tensor:
    return make_images(3, 224, 224, seed=5)


def test_scores_are_a_distribution_over_the_real_tokens():
    torch.manual_seed(0)
    scorer = LearnedScorer(32)
    x, valid = torch.randn(2, 6, 32), torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    s = scorer(x, valid)
    torch.testing.assert_close(s.sum(1), torch.ones(2))
    assert bool((s[1, 4:] == 0).all()) and bool((s[valid] > 0).all())
    x2 = x.clone()
    x2[1, 4:] = 100.0  # what sits in padding slots changes nothing
    torch.testing.assert_close(scorer(x2, valid), s)


@pytest.mark.parametrize("settings", SETTINGS, ids=["topk", "sample+fuse"])
def test_samplers_use_the_learned_scores_and_batches_equal_single_images(scored, pics, settings):
    plain = copy.deepcopy(scored)
    plain.scorers = None
    with torch.inference_mode():
        pred = scored(pics, settings)
        single = torch.cat([scored(pics[i:i + 1], settings).logits for i in range(len(pics))])
        other = plain(pics, settings)
    torch.testing.assert_close(pred.logits, single, atol=1e-5, rtol=1e-4)
    assert not torch.equal(pred.selections[0].kept, other.selections[0].kept)  # the MLP chose, not ATS
    for sel in pred.selections:
        torch.testing.assert_close(sel.scores.sum(1), torch.ones(len(pics)))


@pytest.mark.parametrize("settings", SETTINGS, ids=["topk", "sample+fuse"])
def test_the_caches_resume_with_the_learned_scorer(scored, pics, settings):
    with torch.inference_mode():
        want = scored(pics, settings).logits
        s1 = stage1_cache(scored, pics, settings.fine_ratio)
        assert torch.equal(run_from_stage1(scored, s1, settings).logits, want)
        assert torch.equal(run_from_stage2(scored, s1, stage2_cache(scored, s1, settings), settings).logits, want)


def test_the_scorer_learns_from_the_task_loss_without_changing_outputs(scored, pics):
    model = copy.deepcopy(scored).train()
    with torch.inference_mode():
        want = model(pics, SETTINGS[0]).logits
    pred = model(pics, SETTINGS[0])
    assert torch.equal(pred.logits.detach(), want)
    F.cross_entropy(pred.logits, torch.arange(3)).backward()
    for s in model.scorers:
        assert float(s.mlp[-1].weight.grad.abs().sum()) > 0


def test_a_learned_scorer_round_trips_through_save_and_load(scored, pics, tmp_path):
    path = checkpoint.save(scored, tmp_path / "scored.safetensors", half=False)
    loaded = checkpoint.load_model(path)
    assert loaded.config.scorer == "learned" and len(loaded.scorers) == 2
    with torch.inference_mode():
        assert torch.equal(scored(pics, SETTINGS[1]).logits, loaded(pics, SETTINGS[1]).logits)
    with pytest.raises(ValueError, match="scorer must be"):
        AdaViTConfig(scorer="mlp")
