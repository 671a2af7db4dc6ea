"""The out-of-distribution score: Mahalanobis statistics, their file, the threshold, the hint and the JSON."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from adavit.app import readouts
from adavit.app.analysis import Analyzer
from adavit.app.models import load_default, tiny
from adavit.core.config import Settings
from adavit.data import load_image, nonflowers, prepare
from adavit.measure.mahalanobis import OODScore, OODStats, auroc, calibrate, fit, for_checkpoint, stats_path
from adavit.weights import checkpoint

FLOWER = str(Path(__file__).resolve().parents[1] / "assets" / "examples" / "flower.jpg")


def clusters(n_per_class=40, classes=3, dim=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = 10 * torch.randn(classes, dim, generator=g)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    scale = torch.tensor([3.0, 1.0, 0.5, 0.2, 0.1])[:dim]  # anisotropic: Euclidean and Mahalanobis differ
    return centres[labels] + torch.randn(len(labels), dim, generator=g) * scale, labels, centres, scale


def test_score_is_the_squared_mahalanobis_distance_to_the_nearest_mean():
    x, y, _, _ = clusters()
    stats = fit(x, y, "toy", shrinkage=0.0)
    means = torch.stack([x[y == c].mean(0) for c in range(3)]).double()
    centred = x.double() - means[y]
    inv = torch.linalg.inv(centred.T @ centred / len(x))
    q = torch.randn(7, 5, dtype=torch.float64) * 5
    d = torch.stack([torch.einsum("bi,ij,bj->b", q - m, inv, q - m) for m in means], 1).min(1).values
    torch.testing.assert_close(stats.score(q.float()), d, rtol=1e-4, atol=1e-3)
    # the anisotropy counts: a step along the noisy axis costs less than the same step along a quiet one
    far_quiet, far_noisy = means[0].clone(), means[0].clone()
    far_quiet[4] += 1.0
    far_noisy[0] += 1.0
    s = stats.score(torch.stack([far_quiet, far_noisy]).float())
    assert s[0] > 10 * s[1]


def test_statistics_round_trip_through_safetensors(tmp_path):
    x, y, _, _ = clusters()
    stats = fit(x, y, "toy").with_threshold(12.5, pass_rate=0.95)
    path = stats.save(tmp_path / "m.ood.safetensors")
    back = OODStats.load(path)
    assert torch.equal(back.means, stats.means) and torch.equal(back.whiten, stats.whiten)
    assert back.threshold == 12.5 and back.dataset == "toy" and back.num_classes == 3
    assert back.info["pass_rate"] == 0.95 and 0 <= back.info["shrinkage"] <= 1 and back.info["n_fit"] == 120
    torch.testing.assert_close(back.score(x), stats.score(x))
    assert path.read_bytes()[:8] != b"\x80\x04\x95"[:8]  # safetensors, not a pickle
    with pytest.raises(ValueError, match="shape"):
        stats.score(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="every class"):
        fit(x, y + 1)


def test_the_card_names_the_statistics(tmp_path):
    weights = tmp_path / "model.safetensors"
    x, y, _, _ = clusters()
    fit(x, y, "toy").with_threshold(3.0).save(stats_path(weights))
    assert stats_path(weights).name == "model.ood.safetensors"
    assert for_checkpoint(weights, {"ood": {"file": "model.ood.safetensors"}}).threshold == 3.0
    assert for_checkpoint(weights, {}) is None  # no entry: no check
    assert for_checkpoint(weights, {"ood": {"file": "gone.safetensors"}}) is None


@pytest.mark.parametrize("n", [1, 19, 20, 100, 1020, 1021])
@pytest.mark.parametrize("rate", [0.95, 0.5, 1.0])
def test_calibration_passes_exactly_the_requested_share(n, rate):
    scores = np.random.default_rng(n).gamma(2.0, 50.0, n)
    t = calibrate(scores, rate)
    assert int((scores <= t).sum()) == math.ceil(rate * n)
    if rate < 1 and math.ceil(rate * n) < n:  # halfway: float noise cannot flip the boundary images
        s = np.sort(scores)
        k = math.ceil(rate * n)
        assert s[k - 1] < t < s[k] and t == pytest.approx((s[k - 1] + s[k]) / 2)
    with pytest.raises(ValueError, match="pass_rate"):
        calibrate(scores, 0.0)


def test_auroc_orders_scores():
    assert auroc([1, 2, 3], [4, 5]) == 1.0 and auroc([4, 5], [1, 2, 3]) == 0.0
    assert auroc([1, 3], [2, 2]) == 0.5


def test_hint_wording_comes_from_the_statistics():
    app = tiny()
    an = Analyzer(app.model, app.class_names)
    r = an.analyze(FLOWER, Settings())
    assert r.ood is None and r.to_json()["ood"] is None  # no statistics: no verdict, and the hint says so
    assert "No out-of-distribution check" in readouts.hint(r, trained=True)
    assert "Untrained" in readouts.hint(r, trained=False)
    out = OODScore(2000.0, 1000.0, "Birds-200", 200, 0.95)
    flagged = readouts.hint(_with(r, out), trained=True)
    assert "not one of the 200 classes of Birds-200" in flagged and "2000 > 1000" in flagged
    assert "95% of Birds-200 val photos" in flagged
    inside = readouts.hint(_with(r, OODScore(900.0, 1000.0, "Birds-200", 200, 0.95)), trained=True)
    assert "Looks like a Birds-200 photo" in inside and "900 ≤ 1000" in inside


def _with(result, ood):
    from dataclasses import replace

    return replace(result, ood=ood)


def test_analyzer_scores_each_image_with_the_statistics():
    images = [FLOWER, *[str(p) for p in sorted(Path(FLOWER).parent.glob("*.jpg")) if p.name != "flower.jpg"][:2]]
    small = tiny(num_classes=3)
    stats = fit(*_features(small, images), "toy").with_threshold(5.0)
    big = tiny()
    assert Analyzer(big.model, big.class_names, ood=stats).ood is None  # 3-class statistics on 102 classes: ignored
    an = Analyzer(small.model, small.class_names, ood=stats)
    r = an.analyze(FLOWER, Settings())
    direct = _features(small, [FLOWER], noise=0.0)[0][:1]
    assert r.ood.score == pytest.approx(float(stats.score(direct)[0]), rel=1e-4)
    assert r.to_json()["ood"] == {"score": round(r.ood.score, 3), "threshold": 5.0,
                                  "in_distribution": r.ood.score <= 5.0}
    # statistics that name their calibration setting score every photo there, whatever the sliders say
    pinned = Analyzer(small.model, small.class_names, ood=stats.with_threshold(5.0, settings=Settings().to_dict()))
    moved = pinned.analyze(FLOWER, Settings(keep1=0.25, keep2=0.3, mode="sample"))
    assert moved.ood.score == pytest.approx(r.ood.score, rel=1e-6) and moved.settings.keep1 == 0.25


def _features(app, images, noise=0.05):
    """Head inputs of the images (through the app's decoding), repeated 10x with noise: a fitting set."""
    with torch.inference_mode():
        f = torch.cat([app.model(prepare(load_image(im).image, 224).tensor, Settings()).features for im in images])
    g = torch.Generator().manual_seed(0)
    x = f.repeat(10, 1) + noise * torch.randn(10 * len(images), f.shape[1], generator=g)
    return x, torch.arange(len(images)).repeat(10)


def test_non_flower_set_is_large_enough_and_synthetic_images_are_fixed():
    photos, missing = nonflowers.installed_photos()
    synth = nonflowers.synthetic()
    assert len(synth) >= 15 and all(im.size == (320, 320) and im.mode == "RGB" for im in synth.values())
    assert np.array_equal(np.asarray(nonflowers.synthetic()["synthetic:gaussian_noise"]),
                          np.asarray(synth["synthetic:gaussian_noise"]))
    assert not any("flower.jpg" in p.path for p in nonflowers.PHOTOS)  # sklearn's dahlia is in-distribution
    if not missing:
        assert len(photos) + len(synth) >= 30 and len(photos) == len(nonflowers.PHOTOS)


@pytest.mark.skipif(not stats_path(checkpoint.SHIPPED).exists(), reason="no OOD statistics beside the checkpoint")
def test_shipped_statistics_label_the_five_examples():
    """The acceptance check on the real model: the dahlia passes, the pagoda, cup, cat and astronaut do not."""
    app = load_default()
    assert app.ood is not None and app.ood.dataset == "Flowers-102" and app.ood.num_classes == 102
    an = Analyzer(app.model, app.class_names, ood=app.ood)
    folder = Path(FLOWER).parent
    verdict = {f: an.analyze(str(folder / f), Settings(**app.default_settings)).ood.in_distribution
               for f in ("flower.jpg", "china.jpg", "coffee.jpg", "chelsea.jpg", "astronaut.jpg")}
    assert verdict == {"flower.jpg": True, "china.jpg": False, "coffee.jpg": False, "chelsea.jpg": False,
                       "astronaut.jpg": False}
