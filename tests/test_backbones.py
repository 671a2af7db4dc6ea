"""AdaViT on other timm ViTs: patch 16 (DeiT), registers (DINOv2-reg), a distillation token.

Random weights (offline). What must hold on any backbone: the plain ViT's output when every token
runs, prefix tokens carried through every stage and never scored, a batch equal to its images run
one by one, and stage-0 boxes that tile the input with regions of 2x2 patches.
"""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from adavit.core.config import AdaViTConfig, Settings
from adavit.core.model import AdaViT
from adavit.measure.bench import plain_vit
from adavit.weights.checkpoint import from_timm

# name -> (patch, prefix tokens)
BACKBONES = {
    "deit_small_patch16_224": (16, 1),
    "vit_small_patch14_reg4_dinov2": (14, 5),
    "deit_small_distilled_patch16_224": (16, 2),
}
SAMPLINGS = [Settings(fine_ratio=0.5, keep1=0.5, keep2=0.5),
             Settings(fine_ratio=0.3, keep1=0.4, keep2=0.6, mode="sample", fuse=True)]


@pytest.fixture(scope="module", params=list(BACKBONES), ids=list(BACKBONES))
def backbone(request) -> tuple[str, AdaViT]:
    torch.manual_seed(0)
    model = from_timm(AdaViTConfig(num_classes=5, model_name=request.param), "random")
    return request.param, model


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 224, 224, generator=g)
    x[1, :, :112] = 0.5  # a flat half: the gate keeps it coarse
    return (x - 0.45) / 0.25


def test_geometry_comes_from_the_backbone(backbone):
    name, model = backbone
    assert (model.patch, model.num_prefix) == BACKBONES[name]
    assert model.region == 2 * model.patch


def test_every_token_is_the_plain_timm_vit(backbone, images):
    """Positions, prefix order and no_embed_class exactly as timm's own forward builds them."""
    _, model = backbone
    plain = plain_vit(model, 224)
    with torch.inference_mode():
        ours = model.features(model.run(*model.tokenize(images, 1.0), Settings.full()).tokens)
        theirs = plain.forward_features(images)[:, 0]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("settings", SAMPLINGS, ids=["topk", "sample+fuse"])
def test_prefix_tokens_ride_through_every_stage_unscored(backbone, images, settings):
    name, model = backbone
    p = BACKBONES[name][1]
    with torch.inference_mode():
        tokens, layout = model.tokenize(images, settings.fine_ratio)
        assert tokens.num_prefix == p and tokens.x.shape[1] == p + layout.boxes.shape[1]
        out = model.run(tokens, layout, settings)
    assert out.tokens.num_prefix == p
    for sel in out.selections:  # scores cover patch tokens only, so no prefix token can be dropped
        assert sel.scores.shape[1] == sel.src.shape[1] and bool((sel.src >= -2).all())
    n0 = layout.boxes.shape[1]
    k1 = -(-n0 * settings.keep1 // 1)
    counts = torch.stack(out.counts, 1)
    assert bool((counts[:, 0] == n0 + p).all())
    if settings.mode == "topk" and not settings.fuse:
        assert bool((counts[:, 1] == k1 + p).all())
    assert bool((counts[:, 1:] > p).all())


def test_prefix_tokens_are_updated_by_the_blocks_like_timm(backbone, images):
    """The register / distillation tokens enter stage 1 as timm embeds them and are transformed by it."""
    name, model = backbone
    p = BACKBONES[name][1]
    plain = plain_vit(model, 224)
    with torch.inference_mode():
        tokens, _ = model.tokenize(images, 1.0)
        want = plain.norm_pre(plain._pos_embed(plain.patch_embed(images)))
    torch.testing.assert_close(tokens.x[:, :p], want[:, :p], atol=0, rtol=0)


@pytest.mark.parametrize("settings", SAMPLINGS, ids=["topk", "sample+fuse"])
def test_a_batch_equals_its_images_one_by_one(backbone, images, settings):
    _, model = backbone
    with torch.inference_mode():
        batch = model(images, settings).logits
        single = torch.cat([model(images[i:i + 1], settings).logits for i in range(len(images))])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("side", [224, 448])
def test_stage0_boxes_tile_the_image(backbone, images, side):
    _, model = backbone
    x = torch.nn.functional.interpolate(images, size=(side, side), mode="bilinear") if side != 224 else images
    with torch.inference_mode():
        _, layout = model.tokenize(x, 0.4)
    cell = model.patch
    for b in range(len(x)):
        cover = torch.zeros(side // cell, side // cell, dtype=torch.long)
        for (x0, y0, x1, y1), s in zip(layout.boxes[b].long().tolist(), layout.scales[b].tolist(), strict=True):
            assert x1 - x0 == y1 - y0 == s * cell  # fine = one patch, coarse = a 2x2-patch region
            assert x0 % (s * cell) == 0 and y0 % (s * cell) == 0
            cover[y0 // cell:y1 // cell, x0 // cell:x1 // cell] += 1
        assert bool((cover == 1).all())  # every pixel in exactly one token
    widths = (layout.boxes[..., 2] - layout.boxes[..., 0]).unique().tolist()
    assert widths == [model.patch, model.region]


def test_one_training_step_moves_the_weights_and_the_prefix(backbone, images):
    name, model = backbone
    model = from_timm(AdaViTConfig(num_classes=5, model_name=name), "random").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-3)
    loss = nn.functional.cross_entropy(model(images, Settings()).logits, torch.tensor([0, 1, 2]))
    loss.backward()
    prefix = [n for n in ("cls_token", "reg_token", "dist_token") if getattr(model.vit, n, None) is not None]
    for n in prefix:
        assert getattr(model.vit, n).grad.abs().sum() > 0, n  # the prefix tokens take part in the loss
    opt.step()
    after = model.state_dict()
    for n in ("vit.head.weight", "vit.blocks.0.attn.qkv.weight", *(f"vit.{n}" for n in prefix)):
        assert not torch.equal(before[n], after[n]), n
    assert torch.isfinite(loss)


def test_wrong_sides_name_the_backbone_patch(backbone):
    _, model = backbone
    with pytest.raises(ValueError, match=f"multiple of {model.region} px \\(2x2 patches of {model.patch} px\\)"):
        model.tokenize(torch.zeros(1, 3, 224 + model.patch, 224), 0.5)


def test_backbones_that_cannot_work_are_refused_with_the_reason():
    no_cls = timm.create_model("vit_small_patch16_224", pretrained=False, class_token=False, global_pool="avg",
                               num_classes=5)
    with pytest.raises(ValueError, match="no CLS token"):
        AdaViT(no_cls, AdaViTConfig(num_classes=5))
    avg = timm.create_model("vit_small_patch16_224", pretrained=False, global_pool="avg", num_classes=5)
    with pytest.raises(ValueError, match="pools by 'avg'"):
        AdaViT(avg, AdaViTConfig(num_classes=5))
    odd = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=5)
    odd.blocks[3].attn = nn.Identity()
    with pytest.raises(ValueError, match="block 3 has no standard timm Attention"):
        AdaViT(odd, AdaViTConfig(num_classes=5))
    ok = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=5)
    with pytest.raises(ValueError, match="multiple of 32 px"):
        AdaViT(ok, AdaViTConfig(num_classes=5, windows=(56, 0, 0)))


@pytest.mark.parametrize("name, settings", [
    ("adavit", {"settings": Settings(0.5, 0.5, 0.5, "topk", True)}),
    ("resolution", {"size": (112, 112)}),  # 8 x 8 patches of 14, 7 x 7 of 16
    ("random", {"keep": (0.5, 0.25), "split": (2, 4, 6)}), ("evit", {"keep": (0.5, 0.5)}),
    ("ats", {"keep": (0.6, 0.5)}), ("tome", {"r": 16}),
])
def test_every_comparison_strategy_runs_with_the_prefix_tokens(backbone, images, name, settings):
    from adavit.core.strategies import make
    from adavit.measure.flops import outcome_gflops

    _, model = backbone
    with torch.inference_mode():
        out = make(name, **settings).forward(model, images)
        assert out.logits.shape == (3, 5) and bool(torch.isfinite(out.logits).all())
        assert bool((out.tokens_per_block > model.num_prefix).all())
        assert float(outcome_gflops(model, out).min()) > 0


def test_tome_without_merges_and_resolution_at_full_size_are_the_plain_vit(backbone, images):
    from adavit.core.strategies import make

    _, model = backbone
    with torch.inference_mode():
        full = model(images, Settings.full()).logits
        for strategy in (make("tome", r=0), make("resolution", size=(224, 224))):
            torch.testing.assert_close(strategy.forward(model, images).logits, full, atol=1e-5, rtol=1e-4)
