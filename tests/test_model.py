"""AdaViT end to end (random seeded ViT-S/14): exact equivalences, batch = single, invariants, edges."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from adavit.core.attention import local_window_mask, window_ids
from adavit.core.config import AdaViTConfig, Settings
from adavit.core.model import AdaViT
from adavit.core.sampler import FUSED
from adavit.core.stages import _centres
from adavit.measure import latency
from adavit.measure.bench import plain_vit
from adavit.weights import checkpoint

SETTINGS = {
    "topk": Settings(fine_ratio=0.5, keep1=0.5, keep2=0.6),
    "sample": Settings(fine_ratio=0.5, keep1=0.5, keep2=0.6, mode="sample"),
    "fuse": Settings(fine_ratio=0.3, keep1=0.4, keep2=0.5, fuse=True),
    "sample+fuse": Settings(fine_ratio=0.3, keep1=0.4, keep2=0.5, mode="sample", fuse=True),
}


def test_full_settings_equal_the_plain_timm_forward(model, images):
    """fine_ratio 1 + keep 1/1 is timm's own forward of the same weights (grid resampled alike)."""
    plain = plain_vit(model, 224)
    with torch.inference_mode():
        ours = model(images, Settings.full())
        want = plain(images)
    assert (ours.logits - want).abs().max() <= 1e-4
    assert ours.tokens_per_stage.tolist() == [[257, 257, 257]] * len(images)


@pytest.fixture(scope="module")
def predictions(peaked_model, images):
    with torch.inference_mode():
        return {k: peaked_model(images, s) for k, s in SETTINGS.items()}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_batch_equals_single(peaked_model, images, predictions, name):
    batch = predictions[name]
    with torch.inference_mode():
        singles = [peaked_model(images[i:i + 1], SETTINGS[name]) for i in range(len(images))]
    logits = torch.cat([p.logits for p in singles])
    assert (batch.logits - logits).abs().max() <= 1e-4
    assert torch.equal(batch.tokens_per_stage, torch.cat([p.tokens_per_stage for p in singles]))
    for b, single in enumerate(singles):
        for ours, alone in zip(batch.traces()[b].stages, single.traces()[0].stages):
            assert np.array_equal(ours.ids, alone.ids) and np.array_equal(ours.kept, alone.kept)
    if SETTINGS[name].mode == "sample":  # the padded path really ran
        assert len(set(map(tuple, batch.tokens_per_stage.tolist()))) > 1


def test_batch_equals_single_with_local_windows(peaked_model, images):
    windowed = AdaViT(peaked_model.vit, AdaViTConfig(num_classes=10, windows=(112, 0, 0)))
    s = SETTINGS["sample"]
    with torch.inference_mode():
        batch = windowed(images, s)
        singles = torch.cat([windowed(images[i:i + 1], s).logits for i in range(len(images))])
        plain = peaked_model(images, s)
    assert (batch.logits - singles).abs().max() <= 1e-4
    assert (batch.logits - plain.logits).abs().max() > 1e-3  # the windows do change the network


def test_deterministic(peaked_model, images):
    with torch.inference_mode():
        a = peaked_model(images, SETTINGS["sample+fuse"])
        b = peaked_model(images, SETTINGS["sample+fuse"])
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(a.tokens_per_stage, b.tokens_per_stage)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_trace_invariants(predictions, name):
    pred, s = predictions[name], SETTINGS[name]
    for b, trace in enumerate(pred.traces()):
        patching, ats1, ats2 = trace.stages
        # each stage sees exactly what the one before kept (plus its fused token)
        assert np.array_equal(ats1.ids, patching.ids)
        real = ats2.ids[ats2.ids != FUSED]
        assert np.array_equal(real, ats1.ids[ats1.kept & (ats1.ids != FUSED)])
        assert set(real) <= set(ats1.ids)
        # the counts a stage ran on are the trace's tokens plus CLS
        stage3 = ats2.n_kept + ats2.has_fused_token
        assert trace.tokens_per_stage == (len(patching.ids) + 1, len(ats2.ids) + 1, stage3 + 1)
        assert pred.tokens_per_stage[b].tolist() == list(trace.tokens_per_stage)
        for step, keep in ((ats1, s.keep1), (ats2, s.keep2)):
            assert abs(step.scores.sum() - 1) < 1e-5
            assert step.n_kept <= math.ceil(keep * len(step.ids) - 1e-9)
            if s.mode == "topk":
                assert step.n_kept == math.ceil(keep * len(step.ids) - 1e-9)
            dropped = (~step.kept).any()
            assert step.has_fused_token == bool(s.fuse and dropped)
        assert (ats2.ids == FUSED).sum() == int(s.fuse and (~ats1.kept).any())


@pytest.mark.parametrize("name", ["sample", "sample+fuse"])
def test_scores_are_zero_on_padding(predictions, name):
    padded = 0
    for sel in predictions[name].selections:
        assert torch.allclose(sel.scores.sum(1), torch.ones(len(sel.scores)), atol=1e-5)
        assert (sel.scores[~sel.valid] == 0).all()
        assert not (sel.kept & ~sel.valid).any()
        padded += int((~sel.valid).sum())
    assert padded > 0


def test_local_window_attention_is_exact(model, images):
    """A block under the window mask = the block run on each window's tokens (plus CLS) alone."""
    with torch.inference_mode():
        tokens, layout = model.tokenize(images[:1], 0.5)  # mixed fine and coarse tokens
        ids = window_ids(_centres(tokens, layout.boxes), 112, 224)
        mask = local_window_mask(ids, 1, None)
        blk = model.vit.blocks[0]
        local = blk(tokens.x, attn_mask=mask)
        assert torch.allclose(local[:, 0], blk(tokens.x)[:, 0], atol=1e-5)  # CLS stays global
        cells = ids[0].unique()
        assert len(cells) == 4 and bool((layout.scales == 1).any() and (layout.scales == 2).any())
        for cell in cells:
            members = (ids[0] == cell).nonzero().flatten() + 1
            alone = blk(tokens.x[:, torch.cat([torch.tensor([0]), members])])
            assert (local[:, members] - alone[:, 1:]).abs().max() <= 1e-5


def test_tiny_keep_leaves_one_token_and_cls(model, images):
    with torch.inference_mode():
        pred = model(images[:2], Settings(fine_ratio=0.5, keep1=1e-6, keep2=1e-6))
    t = 1 + 4 * 32 + 32
    assert pred.tokens_per_stage.tolist() == [[t, 2, 2]] * 2


@pytest.mark.parametrize("kwargs, message", [
    ({"keep1": 0.0}, "keep"), ({"keep2": 1.5}, "keep"), ({"keep1": float("nan")}, "keep"),
    ({"mode": "random"}, "mode"), ({"fine_ratio": -0.1}, "fine_ratio"), ({"resolution": 2000}, "1008"),
    ({"resolution": 224.0}, "whole number"),
])
def test_bad_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Settings(**kwargs)


def test_bad_image_shape_raises(model):
    with pytest.raises(ValueError, match="multiple of 28 px"):
        model(torch.zeros(1, 3, 224, 250))
    with pytest.raises(ValueError, match="multiple of 28 px"):  # the side legal for the backbone's patch
        model(torch.zeros(1, 3, 230, 230), Settings(resolution=230))
    with pytest.raises(ValueError, match="shape"):
        model(torch.zeros(3, 224, 224))


# ---------------------------------------------------------------- adavit.measure.latency


def test_cpu_layout_changes_nothing_but_strides(model, images, tmp_path):
    fast = copy.deepcopy(model)
    keys = list(fast.state_dict())
    assert latency.optimize_for_cpu(fast, Settings()) == (2,)  # ~41 tokens at batch 1
    lin = fast.stages[2][0].mlp.fc1
    assert latency.is_column_major(lin.weight) and not latency.is_column_major(fast.stages[1][0].mlp.fc1.weight)
    assert list(fast.state_dict()) == keys
    with torch.inference_mode():
        assert (fast(images[:2]).logits - model(images[:2]).logits).abs().max() <= 1e-5
    # saving (safetensors wants contiguous tensors) and loading back
    path = checkpoint.save(fast, tmp_path / "m.safetensors", half=False)
    loaded = checkpoint.load_model(path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    # training: gradients and an optimiser step work on the column-major weights
    fast.train()
    opt = torch.optim.SGD(fast.parameters(), lr=0.1)
    fast(images[:1], Settings()).logits.sum().backward()
    before = lin.weight.detach().clone()
    opt.step()
    assert lin.weight.grad is not None and not torch.equal(before, lin.weight.detach())
    assert latency.restore(fast) > 0 and lin.weight.is_contiguous()
