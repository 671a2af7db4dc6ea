"""Mixed-scale patching: the tokens tile the image exactly, fine ratio edges, sizes, position cache."""
from __future__ import annotations

import pytest
import torch

from adavit.core import patching
from adavit.core.config import check_side


def _coverage(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    cover = torch.zeros(h, w, dtype=torch.int32)
    for x0, y0, x1, y1 in boxes.long().tolist():
        cover[y0:y1, x0:x1] += 1
    return cover


@pytest.mark.parametrize("size", [(224, 224), (280, 280), (224, 336)])
@pytest.mark.parametrize("fine_ratio", [0.0, 0.3, 1.0])
def test_stage0_boxes_tile_the_image(model, make_images, size, fine_ratio):
    h, w = size
    with torch.inference_mode():
        tokens, layout = model.tokenize(make_images(2, h, w), fine_ratio)
    assert layout.size == (h, w)
    for b in range(2):
        boxes = layout.boxes[b]
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sum()
        assert area == h * w
        assert torch.equal(_coverage(boxes, h, w), torch.ones(h, w, dtype=torch.int32))  # no gap, no overlap
        side = boxes[:, 2] - boxes[:, 0]
        assert torch.equal(side, torch.where(layout.scales[b] == 1, 14.0, 28.0))


def test_fine_ratio_edges(model, images):
    regions = (224 // 28) ** 2
    with torch.inference_mode():
        t0, l0 = model.tokenize(images, 0.0)
        t1, l1 = model.tokenize(images, 1.0)
        th, lh = model.tokenize(images, 0.5)
    assert t0.x.shape[1] == 1 + regions and bool((l0.scales == 2).all())  # all coarse: T = R
    assert t1.x.shape[1] == 1 + 4 * regions and bool((l1.scales == 1).all())  # all fine
    n_fine = (lh.scales == 1).sum(1)
    assert n_fine.tolist() == [4 * round(0.5 * regions)] * len(images)


def test_split_follows_the_gate(model, images):
    """The regions that split are the ones with the most detail (the top fine_ratio share)."""
    with torch.inference_mode():
        _, layout = model.tokenize(images, 0.25)
    score = patching.detail_score(images).flatten(1)
    for b in range(len(images)):
        fine_gate = layout.gate[b][layout.scales[b] == 1]
        coarse_gate = layout.gate[b][layout.scales[b] == 2]
        assert fine_gate.min() >= coarse_gate.max()
        top = torch.sort(score[b], descending=True).values[:16]
        assert torch.allclose(top, torch.sort(fine_gate.unique(), descending=True).values)


def test_all_fine_is_the_plain_vit_embedding(model, make_images):
    """fine_ratio 1 takes the plain path: timm's patch embedding + the resampled grid, raster order."""
    x = make_images(2, 224, 336)
    with torch.inference_mode():
        tokens, layout = model.tokenize(x, 1.0)
        pos = patching.position_grid(model.vit, (16, 24))
        want = model.vit.patch_embed.proj(x).flatten(2).transpose(1, 2) + pos
    assert torch.equal(tokens.x[:, 1:], want)
    assert torch.equal(layout.boxes[0, :3, :2], torch.tensor([[0.0, 0.0], [14.0, 0.0], [28.0, 0.0]]))


def test_mixed_tokens_are_the_conv_embeddings_of_their_boxes(model, make_images):
    """Only the chosen patches are projected; each token equals the conv embedding of its box
    (the image for a fine token, its 2x area-downsampled copy for a coarse one) plus its position."""
    x = make_images(2, 224, 280)
    with torch.inference_mode():
        tokens, layout = model.tokenize(x, 0.3)
        proj = model.vit.patch_embed.proj
        fine = proj(x).flatten(2).transpose(1, 2) + patching.position_grid(model.vit, (16, 20))
        low = torch.nn.functional.avg_pool2d(x, 2)
        _, coarse_pos = patching._positions(model.vit, (16, 20))
        coarse = proj(low).flatten(2).transpose(1, 2) + coarse_pos
    x0, y0 = layout.boxes[..., 0].long(), layout.boxes[..., 1].long()
    fine_idx = (y0 // 14) * 20 + x0 // 14
    coarse_idx = (y0 // 28) * 10 + x0 // 28
    is_fine = (layout.scales == 1).unsqueeze(-1)
    pick = lambda t, i: torch.gather(t, 1, i.unsqueeze(-1).expand(-1, -1, t.shape[-1]))  # noqa: E731
    want = torch.where(is_fine, pick(fine, fine_idx), pick(coarse, coarse_idx))
    assert 0 < int((layout.scales == 1).sum()) < layout.scales.numel()
    torch.testing.assert_close(tokens.x[:, 1:], want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("side", [230, 14, 250])
def test_side_not_a_multiple_of_28_raises(model, side):
    with pytest.raises(ValueError, match="multiple of 28 px"):
        model.tokenize(torch.zeros(1, 3, side, 224), 0.5)
    with pytest.raises(ValueError, match="multiple of 28 px"):
        check_side(side, "resolution")  # what the app checks its slider against (the model's patch)


def test_position_cache_follows_the_parameter(model):
    vit = model.vit
    with torch.inference_mode():
        first, _ = patching._positions(vit, (8, 8))
        again, _ = patching._positions(vit, (8, 8))
    assert again is first  # cached
    assert torch.equal(first, patching.position_grid(vit, (8, 8)))
    saved = vit.pos_embed.detach().clone()
    try:
        with torch.no_grad():
            vit.pos_embed.add_(1.0)  # bumps the version counter, as load_state_dict and optimisers do
            moved, _ = patching._positions(vit, (8, 8))
        assert torch.allclose(moved, first + 1.0, atol=1e-5)
    finally:
        with torch.no_grad():
            vit.pos_embed.copy_(saved)


def test_position_grid_gets_gradients_when_training(model, make_images):
    x = make_images(1, 56, 56)
    model.vit.pos_embed.grad = None
    tokens, _ = model.tokenize(x, 0.5)
    tokens.x.sum().backward()
    grad = model.vit.pos_embed.grad
    model.zero_grad(set_to_none=True)
    assert grad is not None and grad[0, 1:].abs().sum() > 0
