"""Sweep: the grid, the Pareto front, cached results equal plain evaluation, and the CLI's outputs."""
from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import TensorDataset

from adavit import data
from adavit.core.config import AdaViTConfig, Settings
from adavit.core.model import AdaViT
from adavit.measure.evaluate import evaluate
from adavit.measure.sweep import grid, main, pareto, sweep
from adavit.weights import checkpoint

needs_data = pytest.mark.skipif(data.default_data_root() is None,
                                reason="Flowers-102 not found ($ADAVIT_DATA or ../shared/data)")
pytestmark = pytest.mark.usefixtures("one_thread")
SIDE = 112  # small inputs keep these tests fast
CARD_KEYS = ("fine_ratio", "keep1", "keep2", "mode", "fuse", "top1", "weighted_f1", "gflops_mean",
             "latency_ms_b1", "tokens_per_stage")


@pytest.fixture(scope="module")
def model() -> AdaViT:
    torch.manual_seed(0)
    return AdaViT.create(AdaViTConfig(num_classes=102))


def test_grid_is_the_product_plus_the_full_point_once():
    points = grid([0.5, 1.0], [0.5, 1.0], [1.0], ["topk"], resolution=SIDE)
    assert len(points) == 4  # (1, 1, 1) is the full point itself: not added twice
    assert points.count(Settings.full(SIDE)) == 1
    points = grid([0.5], [0.25], [0.5, 1.0], ["topk", "sample"], fuse=True, resolution=SIDE)
    assert len(points) == 5 and points[-1] == Settings.full(SIDE)
    assert all(p.fuse for p in points[:-1])
    with pytest.raises(ValueError, match="keep"):
        grid([0.5], [0.0], [0.5])


def test_pareto_front_on_a_hand_example():
    cost = [1.0, 2.0, 2.0, 3.0, 4.0, 0.5]
    acc = [0.5, 0.7, 0.6, 0.7, 0.9, 0.5]
    # 2 is beaten by 1 (same cost, better), 3 by 1 (cheaper, same accuracy), 0 by 5 (cheaper, same)
    assert pareto(cost, acc).tolist() == [5, 1, 4]


def test_cached_sweep_equals_plain_evaluation(model):
    images = torch.randn(5, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(3))
    ds = TensorDataset(images, torch.tensor([0, 1, 2, 3, 4]))
    points = grid([0.25, 0.5], [0.5], [0.25], ["topk", "sample"], resolution=SIDE)
    results = sweep(model, ds, points, batch_size=2, latency_runs=1, progress=False)
    assert [r.settings for r in results] == points
    for s, res in zip(points, results, strict=True):
        plain = evaluate(model, ds, s, batch_size=2, latency_images=0, progress=False)
        assert res.preds.tolist() == plain.preds.tolist(), s
        assert (res.tokens == plain.tokens).all() and (res.gflops == plain.gflops).all(), s
        assert res.latency_ms_b1 > 0 and plain.latency_ms_b1 is None


@needs_data
def test_sweep_cli_writes_json_html_and_updates_the_card(model, tmp_path, capsys):
    weights = checkpoint.save(model, tmp_path / "random.safetensors",
                              {"default_settings": Settings().to_dict(), "val": {"top1": 0.1}, "recipe": {"seed": 0}})
    out, html = tmp_path / "sweep.json", tmp_path / "pareto.html"
    rc = main(["--checkpoint", str(weights), "--fine-ratios", "0.5", "--keeps1", "0.5,1", "--keeps2", "0.5",
               "--per-class", "1", "--limit", "4", "--resolution", str(SIDE), "--batch-size", "4",
               "--latency-runs", "1", "--json", str(out), "--html", str(html), "--update-card",
               "--resolutions", "56,84"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["n_images"] == 4 and res["split"] == "val"
    points = res["points"]
    assert [(p["fine_ratio"], p["keep1"], p["keep2"], p["full"]) for p in points] == [
        (0.5, 0.5, 0.5, False), (0.5, 1.0, 0.5, False), (1.0, 1.0, 1.0, True)]
    full = points[-1]
    assert full["tokens_per_stage"] == [(SIDE // 14) ** 2 + 1] * 3
    assert points[0]["gflops_mean"] < points[1]["gflops_mean"] < full["gflops_mean"]
    assert all(0 <= p["top1"] <= 1 and p["latency_ms_b1"] > 0 for p in points)
    assert any(p["pareto_gflops"] for p in points) and any(p["pareto_latency"] for p in points)
    base = res["resolution_baseline"]  # every token at 56 and 84 px: 4x4 and 6x6 patches
    assert [(b["side"], b["tokens_per_stage"]) for b in base] == [(56, [17.0] * 3), (84, [37.0] * 3)]
    assert base[0]["gflops_mean"] < base[1]["gflops_mean"] < full["gflops_mean"]
    page = html.read_text()
    assert "Pareto front" in page and "every token" in page and "resolution baseline" in page
    card = checkpoint.read_card(weights)
    assert card["val"] == {"top1": 0.1} and card["recipe"] == {"seed": 0}  # other keys kept
    assert card["default_settings"] == Settings().to_dict()
    assert card["config"] == json.loads(json.dumps(model.config.to_dict()))
    assert len(card["sweep"]) == 3 and card["sweep_resolution"] == base
    for entry in card["sweep"]:
        assert set(CARD_KEYS) <= set(entry)
    assert "every token" in capsys.readouterr().out


def test_sweep_cli_rejects_a_bad_grid(model, tmp_path, capsys):
    weights = checkpoint.save(model, tmp_path / "random.safetensors")
    assert main(["--checkpoint", str(weights), "--keeps2", "0,0.5"]) == 2
    assert "keep[1] must be in (0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--keeps1", "half"])
    assert "comma-separated numbers" in capsys.readouterr().err
