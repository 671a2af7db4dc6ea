"""The training levers of the recipe: self-distillation, a held-out selection set, several resolutions.

The loss and the split are checked exactly; the recipe runs on a few Flowers-102 images (skip
without ../shared or the backbone).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from adavit import data
from adavit.core.config import Settings
from adavit.train.distill import Distill, kd_loss
from adavit.train.recipe import SettingsRange, split_holdout
from adavit.train.recipe import main as train
from adavit.weights import checkpoint

ROOT = data.default_data_root()
needs_data = pytest.mark.skipif(ROOT is None, reason="Flowers-102 not found ($ADAVIT_DATA or ../shared/data)")
TINY = ["--limit", "8", "--batch-size", "4", "--probe-epochs", "3", "--val-limit", "4", "--threads", "2",
        "--epochs", "1"]


def test_kd_loss_is_the_tempered_kl_times_t_squared():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    assert kd_loss(t, t, 2.0).abs() < 1e-6
    p = (t / 3).softmax(-1)
    want = (p * (p.log() - (s / 3).log_softmax(-1))).sum(-1).mean() * 9
    torch.testing.assert_close(kd_loss(s, t, 3.0), want)


def test_distilling_pulls_the_reduced_path_toward_the_full_one(model, images):
    """A few steps on the KL alone: the default setting's output moves toward every token's."""
    model = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    reduced, full = Settings(fine_ratio=0.3, keep1=0.5, keep2=0.5), Settings.full()

    def gap() -> float:
        with torch.no_grad():
            return float(kd_loss(model(images, reduced).logits, model(images, full).logits))

    before = gap()
    for _ in range(5):
        with torch.no_grad():
            target = model(images, full).logits
        loss = kd_loss(model(images, reduced).logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert gap() < 0.5 * before


def test_distill_settings_are_checked():
    assert Distill(0.5, every=2).due(0) and not Distill(0.5, every=2).due(1) and not Distill(0.0).due(0)
    for kwargs, message in (({"weight": 1.5}, "--distill"), ({"temperature": 0}, "--distill-temp"),
                            ({"every": 0}, "--distill-every")):
        with pytest.raises(ValueError, match=message):
            Distill(**kwargs)


def test_holdout_is_stratified_disjoint_and_seeded():
    pairs = tuple((f"{c}_{i}.jpg", c) for c in range(5) for i in range(6))
    train_part, held = split_holdout(pairs, 2, seed=1)
    assert len(held) == 10 and sorted(y for _, y in held) == [c for c in range(5) for _ in range(2)]
    assert not set(train_part) & set(held) and len(train_part) + len(held) == len(pairs)
    assert split_holdout(pairs, 2, seed=1) == (train_part, held) and split_holdout(pairs, 2, seed=2)[1] != held
    assert split_holdout(pairs, 0, seed=1) == (pairs, ())
    with pytest.raises(ValueError, match="leaves a class with no training image"):
        split_holdout(pairs, 6, seed=0)


def test_holdout_folds_of_one_seed_are_disjoint_and_fold_0_is_the_default():
    pairs = tuple((f"{c}_{i}.jpg", c) for c in range(5) for i in range(6))
    folds = [split_holdout(pairs, 2, seed=1, fold=k)[1] for k in range(3)]
    assert folds[0] == split_holdout(pairs, 2, seed=1)[1]
    assert sorted(p for fold in folds for p in fold) == sorted(pairs)  # three folds of two cover six per class
    for k, held in enumerate(folds):
        assert sorted(y for _, y in held) == [c for c in range(5) for _ in range(2)]
        assert not set(held) & set(folds[k - 1])
    with pytest.raises(ValueError, match="--holdout-fold 3: the smallest class \\(6 images\\) has folds 0 to 2"):
        split_holdout(pairs, 2, seed=1, fold=3)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@needs_data
def test_recipe_with_holdout_and_distillation(tmp_path, backbone_ready):
    runs = {}
    for name, extra in (("plain", []), ("distill", ["--distill", "0.5"]),
                        ("sandwich", ["--distill", "0.5", "--sandwich"])):
        out = tmp_path / name
        export = tmp_path / f"{name}.safetensors"
        assert train(["--out", str(out), "--holdout", "1", "--holdout-fold", "1", "--export", str(export), *TINY,
                      *extra]) == 0
        runs[name] = load_file(str(out / "model.safetensors"))
        epoch = records(out)[-1]
        assert "val_top1_default" not in epoch and 0 <= epoch["holdout_top1_default"] <= 1  # val untouched
    card = checkpoint.read_card(export)
    held = card["selection"]["holdout_files"]
    train_files = {Path(p).name for p, _ in data.open_data().train}
    assert len(held) == 102 and set(held) <= train_files and card["recipe"]["sandwich"]
    fold0 = data.open_data().train_keys(split_holdout(data.open_data().train, 1, card["recipe"]["seed"])[1])
    assert card["selection"]["fold"] == 1 and not set(held) & set(fold0)  # fold 1 of the seed, not fold 0
    for a, b in (("plain", "distill"), ("distill", "sandwich")):  # the teacher changes the updates
        assert max(float((runs[a][k] - runs[b][k]).abs().max()) for k in runs[a]) > 0


@needs_data
def test_multi_resolution_training_runs_and_checks_its_sides(tmp_path, backbone_ready, capsys):
    out = tmp_path / "multi"
    assert train(["--out", str(out), "--train-resolutions", "224,280", "--no-val", *TINY]) == 0
    assert records(out)[-1]["optimizer_steps"] == 2
    assert train(["--out", str(tmp_path / "bad"), "--train-resolutions", "280,336", *TINY]) == 2
    assert "must include --resolution 224" in capsys.readouterr().err


def test_kd_loss_matches_torch_kl_on_probabilities():
    s, t = torch.randn(3, 5), torch.randn(3, 5)
    want = F.kl_div(s.log_softmax(-1), t.softmax(-1), reduction="batchmean")
    torch.testing.assert_close(kd_loss(s, t), want)


@needs_data
def test_recipe_trains_a_learned_gate_and_scorer_and_saves_them(tmp_path, backbone_ready):
    out, export = tmp_path / "gate", tmp_path / "gate.safetensors"
    assert train(["--out", str(out), "--gate", "learned", "--scorer", "learned", "--export", str(export),
                  "--no-val", *TINY]) == 0
    model = checkpoint.load_model(export)
    assert model.config.gate == "learned" and model.gate is not None
    assert model.config.scorer == "learned" and len(model.scorers) == 2
    state = json.loads((out / "state.json").read_text())
    assert len(state["param_groups"]) > 1 and any(g.get("lr_scale") == 1.0 for g in state["param_groups"])
    saved = load_file(str(out / "model.safetensors"))
    assert any(k.startswith("gate.") for k in saved) and any(k.startswith("scorers.1.") for k in saved)
    optim = load_file(str(out / "state.safetensors"))
    gate_group = state["param_groups"][-1]  # added last: the gate's and scorers' parameters, with gradients
    assert gate_group["lr_scale"] == 1.0 and all(
        float(optim[f"optim.{pid}.exp_avg"].abs().sum()) > 0 for pid in gate_group["params"])
    with torch.inference_mode():
        pred = model(torch.randn(2, 3, 224, 224), Settings())
    assert pred.layout.gate_logits is not None and pred.logits.shape == (2, 102)


def test_a_larger_side_trains_near_the_base_sides_token_counts():
    base = SettingsRange()
    high = base.at_side(336, 224)
    assert high.fine_ratio == pytest.approx((0.15 * 4 / 9, 4 / 9)) and high.keep == base.keep
    assert base.at_side(224, 224) == base and base.at_side(168, 224) == base  # never above the base range
    s = high.draw(torch.Generator().manual_seed(0), 336)
    assert s.resolution == 336 and high.fine_ratio[0] <= s.fine_ratio <= high.fine_ratio[1]


@needs_data
def test_recipe_fine_tunes_hybrid_attention_and_saves_its_windows(tmp_path, backbone_ready, capsys):
    export = tmp_path / "hybrid.safetensors"
    assert train(["--out", str(tmp_path / "h"), "--windows", "112,0,0", "--export", str(export), "--no-val",
                  *TINY]) == 0
    model = checkpoint.load_model(export)
    assert model.config.windows == (112, 0, 0)
    assert train(["--out", str(tmp_path / "bad"), "--windows", "112,0", *TINY]) == 2
    assert "windows needs one entry per stage" in capsys.readouterr().err
    assert train(["--out", str(tmp_path / "bad2"), "--windows", "100,0,0", *TINY]) == 2
    assert "multiple" in capsys.readouterr().err
    assert train(["--out", str(tmp_path / "bad3"), "--windows", "big", *TINY]) == 2
    assert "--windows must be three comma-separated sides" in capsys.readouterr().err


def test_ablate_multires_variant_replaces_the_high_resolution_arm():
    from adavit.measure.ablate import HIGH, rows
    plain, trained = rows({}), rows({"multires": "x"})
    assert plain["resolution"][1].model == "base" and trained["resolution"][1].model == "multires"
    assert trained["resolution"][1].resolution == HIGH and trained["resolution"][0] == plain["resolution"][0]
    assert trained["resolution"][1].candidates == plain["resolution"][1].candidates and "multires" not in trained


def test_training_ranges_are_flags_and_checked(capsys):
    from adavit.train.recipe import parse_args

    args = parse_args(["--fine-range", "0,0.5", "--keep-range", "0.15,0.75"])
    assert (args.fine_range, args.keep_range) == ((0.0, 0.5), (0.15, 0.75))
    assert (parse_args([]).fine_range, parse_args([]).keep_range) == (SettingsRange.fine_ratio, SettingsRange.keep)
    for flag, bad in (("--fine-range", "0.5,0.2"), ("--keep-range", "0,0.5"), ("--fine-range", "a")):
        with pytest.raises(SystemExit):
            parse_args([flag, bad])
    err = capsys.readouterr().err
    assert "need 0 <= LO <= HI <= 1, got '0.5,0.2'" in err and "need 0.01 <= LO" in err and "expected LO,HI" in err


def test_ablate_high_side_sets_the_resolution_arm_and_its_label():
    from adavit.measure.ablate import rows
    arm = rows({}, 252)["resolution"][1]
    assert arm.resolution == 252 and arm.label == "mixed-scale 252 px"
    assert {s.settings.resolution for s, _ in arm.candidates} == {252}
    trained = rows({"multires": "x"}, 252)["resolution"][1]
    assert trained.label == "mixed-scale 252 px, trained at 224 and 252 px" and trained.resolution == 252


@needs_data
def test_distill_top_teaches_from_the_largest_side(tmp_path, backbone_ready, monkeypatch, capsys):
    """The student sees each batch at the side drawn; with --distill-top the teacher sees it at 224 px."""
    from adavit.train import recipe
    seen = []
    real = recipe.teacher

    def spy(net, model, x, *rest):
        seen.append(x.shape[-1])
        return real(net, model, x, *rest)

    monkeypatch.setattr(recipe, "teacher", spy)
    common = ["--train-resolutions", "168,224", "--no-val", "--distill", "0.5", *TINY, "--epochs", "2"]
    assert train(["--out", str(tmp_path / "same"), *common]) == 0
    same, seen[:] = list(seen), []
    assert train(["--out", str(tmp_path / "top"), *common, "--distill-top"]) == 0
    assert 168 in same and len(seen) == len(same) == 4 and set(seen) == {224}
    assert train(["--out", str(tmp_path / "bad"), "--distill-top", *TINY]) == 2
    assert "--distill-top needs --distill W and --train-resolutions" in capsys.readouterr().err
