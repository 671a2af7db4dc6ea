"""Per-stage overlays: what each layer paints where, checked pixel by pixel on a hand-made trace."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from adavit.app import overlay
from adavit.app.models import tiny
from adavit.app.overlay import COARSE, DROPPED, FINE, Layers, display_base, legend_html, render, render_all
from adavit.core.config import Settings
from adavit.core.trace import StageTrace, Trace

GREY = 128


def _trace(fuse: bool = False) -> Trace:
    """56x56 model input: one coarse token (top-left region) + 12 fine ones; ATS1 drops 3, ATS2 drops 2."""
    boxes, scales = [[0, 0, 28, 28]], [2]
    for y in range(0, 56, 14):
        for x in range(0, 56, 14):
            if not (x < 28 and y < 28):
                boxes.append([x, y, x + 14, y + 14])
                scales.append(1)
    boxes = np.array(boxes, np.float32)
    n = len(boxes)
    ids = np.arange(n)
    patching = StageTrace("patching", ids, boxes, np.array(scales), np.linspace(1, 2, n), np.ones(n, bool),
                          np.zeros(n, bool))
    kept1 = np.ones(n, bool)
    kept1[[1, 2, 3]] = False
    s1 = np.linspace(0.0, 1.0, n)
    ats1 = StageTrace("ats1", ids, boxes, np.array(scales), s1 / s1.sum(), kept1,
                      ~kept1 if fuse else np.zeros(n, bool))
    ids2 = ids[kept1]
    kept2 = np.ones(len(ids2), bool)
    kept2[[1, 2]] = False
    ats2 = StageTrace("ats2", ids2, boxes[ids2], np.array(scales)[ids2], np.full(len(ids2), 1 / len(ids2)), kept2,
                      np.zeros(len(ids2), bool))
    return Trace((56, 56), (patching, ats1, ats2), (n + 1, int(kept1.sum()) + 1, int(kept2.sum()) + 1))


def _base(side: int = 112) -> np.ndarray:
    return np.full((side, side, 3), GREY, np.uint8)


def _centre(box, f: float = 2.0) -> tuple[int, int]:
    x0, y0, x1, y1 = (np.asarray(box) * f).astype(int)
    return (y0 + y1) // 2, (x0 + x1) // 2


def test_no_layers_leaves_the_image_untouched():
    base = _base()
    for stage in ("patching", "ats1", "ats2"):
        out = render(base, _trace(), stage, Layers(False, False, False))
        assert out is not base and np.array_equal(out, base)


def test_grid_draws_fine_and_coarse_boxes_in_their_colours():
    out = render(_base(), _trace(), "patching", Layers(grid=True, heatmap=False, dropped=False))
    assert tuple(out[0, 30]) == COARSE  # top edge of the coarse 28 px region (56 display px)
    assert tuple(out[0, 60]) == FINE  # top edge of the fine token at x 28..42
    assert tuple(out[98, 98]) == (GREY,) * 3  # inside a fine token (display 84..111): untouched


def test_dropped_tokens_are_greyed_and_tinted_with_the_samplers_colour():
    t = _trace()
    ats1 = render(_base(), t, "ats1", Layers(grid=False, heatmap=False, dropped=True))
    dropped1 = _centre(t.stages[1].boxes[1])
    kept = _centre(t.stages[1].boxes[0])
    r, g, b = ats1[dropped1].astype(int)
    assert r > g > b  # orange tint
    assert tuple(ats1[kept]) == (GREY,) * 3
    ats2 = render(_base(), t, "ats2", Layers(grid=False, heatmap=False, dropped=True))
    assert np.array_equal(ats2[dropped1], ats1[dropped1])  # ATS1's drops stay shaded after ATS2
    dropped2 = _centre(t.stages[2].boxes[1])
    r, g, b = ats2[dropped2].astype(int)
    assert r > g and b > g  # magenta tint
    assert tuple(ats1[dropped2]) == (GREY,) * 3  # not dropped yet after ATS1


def test_heatmap_orders_tokens_by_score_per_area():
    t = _trace()
    out = render(_base(), t, "ats1", Layers(grid=False, heatmap=True, dropped=False)).astype(int)
    step = t.stages[1]
    lum = [out[_centre(b)].sum() for b in step.boxes[1:]]  # viridis brightens with the score
    assert lum == sorted(lum)
    assert not np.array_equal(out[_centre(step.boxes[0])], [GREY] * 3)


def test_fused_members_get_a_dot_only_in_fuse_mode():
    layers = Layers(grid=False, heatmap=False, dropped=True)
    t_plain, t_fused = _trace(False), _trace(True)
    centre = _centre(t_fused.stages[1].boxes[2])
    assert tuple(render(_base(), t_fused, "ats1", layers)[centre]) == overlay.FUSED_DOT
    assert tuple(render(_base(), t_plain, "ats1", layers)[centre]) != overlay.FUSED_DOT


def test_real_trace_views_have_the_display_size():
    m = tiny().model
    with torch.inference_mode():
        trace = m(torch.randn(1, 3, 224, 224), Settings(fuse=True)).traces()[0]
    base = display_base(Image.new("RGB", (640, 640), (10, 200, 30)))
    views = render_all(base, trace)
    assert [v.shape for v in views] == [(640, 640, 3)] * 3 and all(v.dtype == np.uint8 for v in views)
    assert len({v.tobytes() for v in views}) == 3


@pytest.mark.parametrize("size, expect", [((224, 224), (512, 512)), ((800, 800), (800, 800)),
                                          ((3000, 3000), (1024, 1024))])
def test_display_base_side(size, expect):
    assert display_base(Image.new("RGB", size)).shape[:2] == expect


def test_layers_from_names_and_bad_stage():
    assert Layers.from_names(["grid", "Dropped"]) == Layers(grid=True, heatmap=False, dropped=True)
    assert Layers.from_names(None) == Layers(False, False, False)
    with pytest.raises(ValueError, match="stage must be one of"):
        render(_base(), _trace(), "ats3")


def test_legend_names_every_colour():
    html = legend_html()
    for rgb in (FINE, COARSE, DROPPED["ats1"], DROPPED["ats2"]):
        assert f"rgb{rgb}" in html
    assert "fused" in html and "coarse 28 px token" in html
    assert "fine 16 px token" in legend_html(16) and "coarse 32 px token" in legend_html(16)


def test_view_files_keep_only_the_newest(tmp_path):
    files = overlay.ViewFiles(tmp_path, keep=3)
    paths = [files.save(_base(32)) for _ in range(5)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.split("/")[-1] for p in paths[-3:])
    decoded = np.asarray(Image.open(paths[-1]))
    assert np.abs(decoded.astype(int) - GREY).max() <= 2
