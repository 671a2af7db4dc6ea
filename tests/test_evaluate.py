"""Evaluation: the stage-1 cache is exact, the metrics are right, and the CLI writes what it promises."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from adavit import data
from adavit.core.config import AdaViTConfig, Settings
from adavit.core.model import AdaViT
from adavit.core.sampler import ceil_tokens
from adavit.measure import metrics
from adavit.measure.cache import run_from_stage1, run_from_stage2, stage1_cache, stage2_cache
from adavit.measure.evaluate import evaluate, main
from adavit.weights import checkpoint

needs_data = pytest.mark.skipif(data.default_data_root() is None,
                                reason="Flowers-102 not found ($ADAVIT_DATA or ../shared/data)")
pytestmark = pytest.mark.usefixtures("one_thread")
CARD_SETTINGS = Settings(fine_ratio=0.5, keep1=0.5, keep2=0.25)
SIDE = 112  # small inputs keep these tests fast; the token arithmetic is the same at any side


def expected_tokens(s: Settings) -> list[int]:
    """Tokens per stage (CLS included) at `s.resolution`, top-k without fusion."""
    regions = (s.resolution // 28) ** 2
    fine = round(s.fine_ratio * regions)
    n0 = 4 * fine + regions - fine
    n1 = ceil_tokens(n0, s.keep1)
    return [n0 + 1, n1 + 1, ceil_tokens(n1, s.keep2) + 1]


@pytest.fixture(scope="module")
def model() -> AdaViT:
    torch.manual_seed(0)
    return AdaViT.create(AdaViTConfig(num_classes=102))


@pytest.fixture(scope="module")
def weights(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "random.safetensors"
    return checkpoint.save(model, path, {"default_settings": CARD_SETTINGS.to_dict(), "note": "random weights"})


@pytest.mark.parametrize("windows", [(0, 0, 0), (56, 56, 0), (0, 56, 56)])
def test_stage1_cache_gives_exactly_the_forward_logits(model, windows):
    net = AdaViT(model.vit, AdaViTConfig(num_classes=102, windows=windows))  # same weights, other attention
    images = torch.randn(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        for fine_ratio in (0.25, 1.0):
            cache = stage1_cache(net, images, fine_ratio)
            for s in (Settings(fine_ratio, 0.5, 0.25), Settings(fine_ratio, 0.3, 0.7, "sample", True),
                      Settings(fine_ratio, 1.0, 1.0)):
                plain, cached = net(images, s), run_from_stage1(net, cache, s)
                assert torch.equal(plain.logits, cached.logits), s
                resumed = run_from_stage2(net, cache, stage2_cache(net, cache, s), s)  # windows in stages 2, 3 too
                assert torch.equal(plain.logits, resumed.logits), s
                assert torch.equal(plain.tokens_per_stage, cached.tokens_per_stage), s
                assert len(cached.selections) == 2
                for a, b in zip(plain.selections, cached.selections, strict=True):
                    assert torch.equal(a.kept, b.kept) and torch.equal(a.fused, b.fused)


def test_run_from_stage1_refuses_another_fine_ratio(model):
    with torch.inference_mode():
        cache = stage1_cache(model, torch.zeros(1, 3, SIDE, SIDE), 0.5)
        with pytest.raises(ValueError, match="built at fine_ratio=0.5, not 0.25"):
            run_from_stage1(model, cache, Settings(fine_ratio=0.25))


def test_classification_metrics_on_a_hand_example():
    names = ["a", "b", "c", "d"]
    scores = metrics.classification(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]), names)
    assert scores["top1"] == 0.75
    # f1: a 2/3 (support 2), b 2/3 (1), c 1 (1), d absent (0) -> (4/3 + 2/3 + 1) / 4
    assert scores["weighted_f1"] == pytest.approx(0.75)
    a, b, c, d = scores["per_class"]
    assert (a["precision"], a["recall"], a["support"]) == (1.0, 0.5, 2)
    assert (b["precision"], b["recall"], b["name"]) == (0.5, 1.0, "b")
    assert d == {"index": 3, "name": "d", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert metrics.confusion(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]), 4).tolist() == [
        [1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    matrix = metrics.confusion(np.array([0, 0, 0, 1, 2, 2]), np.array([1, 1, 0, 2, 0, 2]), 4)
    assert metrics.top_confusions(matrix, names) == [
        {"true": "a", "predicted": "b", "count": 2}, {"true": "b", "predicted": "c", "count": 1},
        {"true": "c", "predicted": "a", "count": 1}]


def test_evaluate_on_tensors(model):
    images = torch.randn(5, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([0, 1, 1, 7, 101])
    s = Settings(fine_ratio=0.25, keep1=0.5, keep2=0.5, resolution=SIDE)
    res = evaluate(model, TensorDataset(images, targets), s, batch_size=2, latency_images=2, progress=False)
    with torch.inference_mode():
        preds = model(images, s).logits.argmax(1).numpy()
    assert res.n_images == 5 and res.preds.tolist() == preds.tolist()
    assert res.top1 == float(np.mean(preds == targets.numpy()))
    assert res.tokens_per_stage == expected_tokens(s)
    assert res.gflops.shape == (5,) and np.all(res.gflops > 0)
    assert res.latency_ms_b1 > 0
    assert sum(c["support"] for c in res.per_class) == 5 and res.per_class[101]["support"] == 1
    assert res.confusion().sum() == 5


@needs_data
def test_evaluate_cli_end_to_end(weights, tmp_path, capsys):
    out, html = tmp_path / "eval.json", tmp_path / "confusion.html"
    rc = main(["--checkpoint", str(weights), "--split", "val", "--per-class", "1", "--limit", "6",
               "--keep1", "0.25", "--resolution", str(SIDE), "--batch-size", "3", "--latency-images", "2",
               "--json", str(out), "--html", str(html)])
    assert rc == 0
    res = json.loads(out.read_text())
    for key in ("top1", "weighted_f1", "gflops_mean", "gflops", "tokens_per_stage", "latency_ms_b1",
                "n_images", "settings", "checkpoint", "split", "per_class"):
        assert key in res, key
    settings = Settings(**{**CARD_SETTINGS.to_dict(), "keep1": 0.25, "resolution": SIDE})  # card + flags
    assert res["settings"] == settings.to_dict()
    assert res["n_images"] == 6 and res["split"] == "val" and res["checkpoint"] == str(weights)
    assert res["tokens_per_stage"] == expected_tokens(settings)
    assert 0.0 <= res["top1"] <= 1.0 and 0.0 <= res["weighted_f1"] <= 1.0
    assert res["gflops_mean"] > 0 and res["latency_ms_b1"] > 0
    assert len(res["per_class"]) == 102 and sum(c["support"] for c in res["per_class"]) == 6
    assert res["per_class"][0]["name"] == "pink primrose"  # no names in the config: the data's json
    assert "plotly" in html.read_text()[:5000].lower()
    printed = capsys.readouterr().out
    assert "weighted F1" in printed and "tokens/stage" in printed


def test_evaluate_cli_without_data_exits_2_with_the_message(weights, tmp_path, capsys):
    rc = main(["--checkpoint", str(weights), "--data-root", str(tmp_path), "--limit", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and "has no flowers-102/imagelabels.mat" in err and "Traceback" not in err


def test_evaluate_cli_missing_checkpoint_exits_2(tmp_path, capsys):
    rc = main(["--checkpoint", str(tmp_path / "none.safetensors"), "--limit", "1"])
    assert rc == 2 and "no checkpoint at" in capsys.readouterr().err


def test_evaluate_cli_rejects_bad_settings(weights, capsys):
    rc = main(["--checkpoint", str(weights), "--keep1", "1.5"])
    assert rc == 2 and "keep[0] must be in (0, 1]" in capsys.readouterr().err


@needs_data
def test_evaluate_cli_test_split_warns_and_is_absent_here(weights, capsys):
    rc = main(["--checkpoint", str(weights), "--split", "test", "--limit", "1"])
    err = capsys.readouterr().err
    assert "held out" in err
    assert rc == 2 and "the test split's images are not under" in err
