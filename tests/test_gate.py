"""The learned gate (MSViT) beside the detail score: its share, determinism, gradients and save/load."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from adavit.core.config import AdaViTConfig, Settings
from adavit.core.model import AdaViT
from adavit.core.patching import _positions
from adavit.train.gate_loss import batch_shaping, relaxed_bernoulli_cdf
from adavit.weights import checkpoint

SETTINGS = Settings(fine_ratio=0.3, keep1=0.5, keep2=0.5)


@pytest.fixture(scope="module")
def gated(layer_scale) -> AdaViT:
    torch.manual_seed(0)
    m = AdaViT.create(AdaViTConfig(num_classes=10, gate="learned"))
    layer_scale(m.vit)
    return m


@pytest.fixture(scope="module")
def pics(make_images) -> torch.Tensor:
    return make_images(4, 224, 224, seed=3)


def test_the_learned_gate_ranks_the_regions_and_is_deterministic(gated, pics):
    with torch.inference_mode():
        a, b = gated(pics, SETTINGS), gated(pics, SETTINGS)
        single = torch.cat([gated(pics[i:i + 1], SETTINGS).logits for i in range(len(pics))])
    assert torch.equal(a.logits, b.logits) and torch.equal(a.layout.boxes, b.layout.boxes)
    torch.testing.assert_close(a.logits, single, atol=1e-5, rtol=1e-4)
    # the slider still sets the count (64 regions at 224 px, 30% split): 19 x 4 fine + 45 coarse
    assert a.tokens_per_stage[:, 0].tolist() == [1 + 19 * 4 + 45] * 4
    detail = copy.deepcopy(gated)
    detail.gate = None
    with torch.inference_mode():
        other = detail(pics, SETTINGS).layout.boxes
    assert not torch.equal(other, a.layout.boxes)  # the gate, not the detail score, chose the regions


def test_the_straight_through_gate_changes_no_output_and_gets_the_task_gradient(gated, pics):
    model = copy.deepcopy(gated).train()
    with torch.inference_mode():
        want = model(pics, SETTINGS).logits
    pred = model(pics, SETTINGS)
    assert torch.equal(pred.logits.detach(), want)  # the decision is 1 in value
    F.cross_entropy(pred.logits, torch.arange(4)).backward()
    last = model.gate.mlp[-1].weight.grad
    assert last is not None and float(last.abs().sum()) > 0


def test_batch_shaping_brings_the_gates_own_share_to_the_target(gated, pics):
    """Trained on the batch-shaping loss alone, p > 0.5 splits 30% (+-5 points) of regions per image."""
    model = copy.deepcopy(gated)
    with torch.no_grad():
        _, layout = model.tokenize(pics, 0.3)
        _, pos_coarse = _positions(model.vit, (16, 16))
        coarse = model.vit.patch_embed.proj(F.avg_pool2d(pics, 2)).flatten(2).transpose(1, 2) + pos_coarse
    opt = torch.optim.Adam(model.gate.parameters(), lr=3e-3)
    for _ in range(150):
        loss = batch_shaping(model.gate(coarse).sigmoid(), target=0.3)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        share = (model.gate(coarse) > 0).float().mean(1)
    assert bool(((share - 0.3).abs() <= 0.05).all()), share
    assert layout.gate_logits.shape == (4, 64)


def test_batch_shaping_is_smallest_at_the_prior():
    torch.manual_seed(0)
    u = torch.rand(8, 400)
    x = ((torch.logit(torch.tensor(0.3)) + torch.logit(u)) / 0.5).sigmoid()  # draws of RB(0.3, temperature 0.5)
    on = batch_shaping(x, 0.3)
    assert on < 1e-3 and batch_shaping(x, 0.7) > 20 * on and batch_shaping(torch.full((8, 400), 0.5), 0.3) > 20 * on
    assert float(1 - relaxed_bernoulli_cdf(torch.tensor(0.5), 0.3, 0.5)) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="target fine share"):
        batch_shaping(x, 1.0)


def test_a_learned_gate_round_trips_through_save_and_load(gated, pics, tmp_path):
    path = checkpoint.save(gated, tmp_path / "gated.safetensors", half=False)
    loaded = checkpoint.load_model(path)
    assert loaded.config.gate == "learned" and loaded.gate is not None
    assert checkpoint.read_card(path)["config"]["gate"] == "learned"
    for k, v in gated.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    with torch.inference_mode():
        assert torch.equal(gated(pics, SETTINGS).logits, loaded(pics, SETTINGS).logits)
    with pytest.raises(ValueError, match="gate must be"):
        AdaViTConfig(gate="learnt")
