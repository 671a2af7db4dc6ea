"""The app's non-UI logic: cached analysis == a plain forward, costs, accuracy sources, chart, texts."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from adavit.app import analysis, readouts
from adavit.app import models as app_model
from adavit.app.analysis import Analyzer, make_settings, parse_mode
from adavit.app.cost import Costs
from adavit.app.live_accuracy import SWEEP, LiveAccuracy, SweepLookup
from adavit.app.pareto import figure
from adavit.core.config import Settings
from adavit.data import default_data_root, prepare
from adavit.data.upload import ImageError, load_image

ROOT = Path(__file__).resolve().parents[1]
FLOWER = str(ROOT / "assets" / "examples" / "flower.jpg")
SETTINGS = [make_settings(0.5, 0.5, 0.5, "top-k"), make_settings(0.25, 0.3, 0.7, "top-k + fuse"),
            make_settings(0.75, 0.4, 0.5, "sample"), make_settings(0.5, 0.2, 0.3, "sample + fuse", 280)]


@pytest.fixture(scope="module")
def tiny():
    return app_model.tiny()


def test_parse_mode_and_settings():
    assert parse_mode("top-k + fuse") == ("topk", True) and parse_mode("sample") == ("sample", False)
    assert parse_mode("topk+fuse") == ("topk", True)
    with pytest.raises(ValueError, match="mode must be one of"):
        parse_mode("median")
    with pytest.raises(ValueError, match="keep"):
        make_settings(0.5, 0.0, 0.5, "top-k")
    with pytest.raises(ValueError, match="multiple of 28"):
        make_settings(0.5, 0.5, 0.5, "top-k", 230)


@pytest.mark.parametrize("settings", SETTINGS, ids=str)
def test_cached_analysis_equals_a_plain_forward(tiny, settings):
    an = Analyzer(tiny.model, tiny.class_names)
    an.analyze(FLOWER, make_settings(settings.fine_ratio, 0.9, 0.9, "top-k", settings.resolution))  # builds stage 1
    r = an.analyze(FLOWER, settings)  # resumes at ATS1 from the stage-1 cache
    prep = prepare(load_image(FLOWER).image, settings.resolution)
    with torch.inference_mode():
        pred = tiny.model(prep.tensor, settings)
    assert np.array_equal(r.probs, pred.logits[0].softmax(-1).numpy())
    ref = pred.traces()[0]
    assert r.tokens_per_stage == ref.tokens_per_stage
    for a, b in zip(r.trace.stages, ref.stages, strict=True):
        assert np.array_equal(a.kept, b.kept) and np.array_equal(a.fused, b.fused) and np.array_equal(a.ids, b.ids)
    assert r.trace.offset == prep.offset and r.trace.scale == prep.scale  # boxes map into the upload


def test_keep_changes_reuse_stage1_and_repeats_reuse_results(tiny, monkeypatch):
    calls = []
    real = analysis.stage1_cache
    monkeypatch.setattr(analysis, "stage1_cache", lambda *a: calls.append(a[2]) or real(*a))
    an = Analyzer(tiny.model, tiny.class_names)
    for keep in (0.5, 0.3, 0.7):
        assert not an.analyze(FLOWER, make_settings(0.5, keep, 0.5, "top-k")).cached
    runs = analysis.STAGE1_RUNS  # timed runs per (image, fine ratio), then never again
    assert calls == [0.5] * runs
    an.analyze(FLOWER, make_settings(0.25, 0.5, 0.5, "sample"))
    assert calls == [0.5] * runs + [0.25] * runs
    assert an.analyze(FLOWER, make_settings(0.5, 0.3, 0.5, "top-k")).cached


def test_bad_upload_raises_image_error(tiny, tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        Analyzer(tiny.model, tiny.class_names).analyze(str(tmp_path / "x.jpg"), Settings())


def test_gflops_equal_the_projects_counter_on_the_real_forward(tiny):
    from adavit.measure.flops import count_flops

    costs = Costs(tiny.model)
    for s in SETTINGS + [Settings.full(252)]:
        x = torch.randn(1, 3, s.resolution, s.resolution)
        with torch.inference_mode():
            pred = tiny.model(x, s)
            counted = count_flops(lambda x=x, s=s: tiny.model(x, s)) / 1e9
        assert costs.gflops(pred) == pytest.approx(counted, rel=1e-12)


def test_full_token_cost_is_cached_per_resolution(tiny):
    costs = Costs(tiny.model)
    x = torch.randn(1, 3, 224, 224)
    ms, g = costs.full(x)
    assert ms > 0 and costs.full(x) == (ms, g)  # measured once
    assert costs.full(torch.randn(1, 3, 280, 280))[1] > g


SWEEP_POINTS = [
    {"fine_ratio": 0.5, "keep1": 0.5, "keep2": 0.5, "mode": "topk", "fuse": False, "resolution": 224,
     "top1": 0.93, "weighted_f1": 0.92, "gflops_mean": 1.5, "latency_ms_b1": 20.0, "tokens_per_stage": [161, 81, 41],
     "n_images": 1020},
    {"fine_ratio": 1.0, "keep1": 1.0, "keep2": 1.0, "mode": "topk", "fuse": False, "resolution": 224,
     "top1": 0.95, "weighted_f1": 0.95, "gflops_mean": 4.6, "latency_ms_b1": 50.0, "tokens_per_stage": [257] * 3,
     "n_images": 1020, "full": True},
]


def test_sweep_lookup_exact_nearest_and_labelled():
    look = SweepLookup(SWEEP_POINTS)
    exact = look(Settings())
    assert exact.top1 == 0.93 and exact.source == "sweep" and SWEEP in exact.text and "this setting" in exact.text
    near = look(Settings(fine_ratio=0.9, keep1=0.9, keep2=0.95))
    assert near.top1 == 0.95 and "nearest swept setting: fine 1" in near.text
    none = SweepLookup([])(Settings())
    assert none.top1 is None and none.source == "none"


@pytest.mark.parametrize("settings", SETTINGS[:3], ids=str)
def test_stage2_cache_resumes_exactly(tiny, settings):
    from adavit.measure.cache import run_from_stage2, stage1_cache, stage2_cache

    images = torch.randn(3, 3, 224, 224)
    with torch.inference_mode():
        ref = tiny.model(images, settings)
        s1 = stage1_cache(tiny.model, images, settings.fine_ratio)
        other_keep2 = Settings(settings.fine_ratio, settings.keep1, 0.9, settings.mode, settings.fuse)
        s2 = stage2_cache(tiny.model, s1, other_keep2)
        pred = run_from_stage2(tiny.model, s1, s2, settings)  # another keep2 from the same stage-2 cache
    assert torch.equal(pred.logits, ref.logits) and torch.equal(pred.tokens_per_stage, ref.tokens_per_stage)
    assert [torch.equal(a.kept, b.kept) for a, b in zip(pred.selections, ref.selections, strict=True)] == [True] * 2


@pytest.mark.skipif(default_data_root() is None, reason="needs Flowers-102 (../shared/data or ADAVIT_DATA)")
def test_live_accuracy_matches_a_direct_evaluation(tiny, monkeypatch):
    from adavit.app import live_accuracy
    from adavit.data import eval_dataset

    calls = []
    real = live_accuracy.stage1_cache
    monkeypatch.setattr(live_accuracy, "stage1_cache", lambda *a: calls.append(a[2]) or real(*a))
    live = LiveAccuracy(tiny.model, default_data_root(), per_class=1)
    settings = [Settings(), Settings(keep1=0.3, mode="sample", fuse=True)]
    accs = [live(s) for s in settings]
    assert len(calls) == 3  # one fine ratio, 102 images in chunks of 34: built once, reused for the 2nd setting
    images, targets = live._subset(224)  # the decoded subset: decoding it twice would double the test's time
    ds, _ = eval_dataset(str(default_data_root()), "val", 224, per_class=1)
    assert torch.equal(images[:2], torch.stack([ds[i][0] for i in range(2)]))  # eval geometry, subset order
    assert sorted(targets.tolist()) == list(range(102))  # stratified: one image per class
    for s, acc in zip(settings, accs, strict=True):
        with torch.inference_mode():
            preds = torch.cat([tiny.model(images[i:i + 51], s).logits.argmax(-1) for i in range(0, 102, 51)])
        assert acc.top1 == pytest.approx(float((preds == targets).float().mean()))
        assert acc.n_images == 102 and acc.source == "live" and "102 Flowers-102 val images" in acc.text
    assert live(settings[0]) is accs[0] and len(live.history) == 2


def test_pareto_figure_marks_the_current_setting():
    acc = SweepLookup(SWEEP_POINTS)(Settings())
    now = {"gflops": 1.4, "latency_ms": 18.0, "accuracy": acc, "settings": Settings().to_dict()}
    fig = figure(SWEEP_POINTS, [], now)
    stars = [t for t in fig.data if t.name == "current setting"]
    assert [(t.x[0], t.y[0]) for t in stars] == [(1.4, 93.0), (18.0, 93.0)]
    front = [t for t in fig.data if t.name == "sweep Pareto front"]
    assert list(front[0].x) == [1.5, 4.6]
    empty = figure([], [], None)
    assert "no accuracy to plot" in empty.layout.annotations[-1].text


def test_readouts(tiny):
    an = Analyzer(tiny.model, tiny.class_names)
    r = an.analyze(FLOWER, Settings())
    html = readouts.stats_html(r, 42.0, 7.0)
    assert "161 → 81 → 41" in html and "257 → 257 → 257" in html and "42 ms" in html
    assert "× less" in html or "× more" in html
    assert readouts.full_tokens(448) == 1025
    assert "Untrained" in readouts.hint(r, trained=False)
    assert r.ood is None and "No out-of-distribution check" in readouts.hint(r, trained=True)  # no statistics
    assert list(readouts.top5(r)) == [n for n, _ in r.top5]
    assert r.reference is None and "against every token at 224 px" not in html
    # another side: also against every token at 224 px, the side compare's budgets are shares of
    r252 = an.analyze(FLOWER, Settings(resolution=252))
    full224 = an.costs.full(prepare(load_image(FLOWER).image, 224).tensor)
    assert r252.reference == full224 and r252.gflops_full > full224[1]
    html = readouts.stats_html(r252, 42.0, 7.0)
    assert "against every token at 224 px" in html and f"{full224[1]:.2f} GFLOPs" in html
    assert r252.to_json()["gflops_full_224"] == round(full224[1], 4) and "gflops_full_224" not in r.to_json()


def test_default_model_says_which_weights(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="no checkpoint at .*missing.safetensors"):  # named: never replaced
        app_model.load_default(tmp_path / "missing.safetensors")
    monkeypatch.setattr(app_model.checkpoint, "SHIPPED", tmp_path / "missing.safetensors")  # a clone without it
    m = app_model.load_default()
    assert not m.trained and ("UNTRAINED head" in m.weights or "RANDOM weights" in m.weights)
    assert len(m.class_names) == 102


def test_timm_models_fail_with_a_message_and_no_side_effects(monkeypatch):
    from adavit.app.explorer import Explorer

    with pytest.raises(ValueError, match="timm has no model"):
        app_model.load_timm("no_such_vit_123")
    with pytest.raises(ValueError, match="type a timm model name"):
        app_model.load_timm("  ")
    monkeypatch.setattr(app_model, "hub_reachable", lambda timeout=2.0: False)  # offline, as on this machine
    ex = Explorer(app_model.tiny())
    with pytest.raises(ValueError, match="hub .* is not reachable .* keeping the current model"):
        ex.add_timm("deit_small_patch16_224")
    assert ex.names == ["tiny test model"]


def test_timm_vit_runs_with_ats_and_equals_timm_at_full_tokens():
    from adavit.app.explorer import Explorer
    from adavit.app.overlay import Layers
    from adavit.core import plugin

    m = app_model.load_timm("deit_tiny_patch16_224", pretrained=False)
    assert not m.trained and "fine-ratio slider does not apply" in m.weights and len(m.class_names) == 1000
    assert plugin.is_patched(m.model.vit) and m.model.config.stages == (4, 4, 4)
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        s = Settings(fine_ratio=1.0, keep1=0.3, keep2=0.6, fuse=True)
        plugin.set_sampling(m.model.vit, keep=(0.3, 0.6), mode="topk", fuse=True)
        assert torch.allclose(m.model(x, s).logits, m.model.vit(x), atol=1e-5)  # the patched forward's logits
        plugin.set_sampling(m.model.vit, keep=1.0, fuse=False)
        assert torch.equal(m.model(x, Settings.full()).logits, m.model.vit(x))  # ATS off = timm's own forward
    ex = Explorer(app_model.tiny())
    ex._add(m)
    out = ex.run(m.name, FLOWER, make_settings(0.5, 0.5, 0.5, "top-k", 252), Layers())
    assert out.result.tokens_per_stage == (257, 129, 65)  # 252 px -> 256 px = 16x16 patches of 16 px
    assert out.result.trace.size == (256, 256) and len(out.views) == 3
    assert ex.accuracy(m.name, Settings()).text.startswith("no accuracy: this model has no checkpoint card")
    assert ex.runner(None).app_model.name == "tiny test model"  # the default model stays


def test_learned_parts_get_parameter_free_twins_in_the_model_menu():
    from adavit.app.explorer import Explorer
    from adavit.core.config import AdaViTConfig
    from adavit.core.model import AdaViT

    torch.manual_seed(0)
    model = AdaViT.create(AdaViTConfig(num_classes=3, gate="learned", scorer="learned"))
    m = app_model.AppModel(model, ("a", "b", "c"), "random weights", False, {"sweep": [{"top1": 0.5}]},
                           "AdaViT-S/14 test")
    ex = Explorer(m, None)
    assert ex.names == ["AdaViT-S/14 test", "AdaViT-S/14 test · detail-score gate",
                        "AdaViT-S/14 test · CLS attention x |V| score"]
    gate_twin, score_twin = (ex.runner(n).app_model for n in ex.names[1:])
    assert gate_twin.model.vit is model.vit and gate_twin.model.gate is None
    assert gate_twin.model.scorers is model.scorers
    assert score_twin.model.scorers is None and score_twin.model.gate is model.gate
    assert gate_twin.sweep == [] and gate_twin.ood is None  # the learned model's sweep is not theirs
    s = Settings(fine_ratio=0.3)
    boxes = [ex.analyze(n, FLOWER, s).trace.stage("patching").boxes for n in ex.names[:2]]
    assert not np.array_equal(boxes[0], boxes[1])  # the learned gate and the detail score split other regions
    kept = [ex.analyze(n, FLOWER, s).trace.stage("ats1").kept for n in (ex.names[0], ex.names[2])]
    assert not np.array_equal(kept[0], kept[1])
