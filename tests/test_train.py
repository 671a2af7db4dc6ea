"""adavit train and adavit traintime on a few Flowers-102 images (skip without ../shared or the backbone)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adavit import data
from adavit.core.config import Settings
from adavit.train import traintime
from adavit.train.recipe import SettingsRange, build_model, parse_args
from adavit.train.recipe import main as train
from adavit.weights import checkpoint
from adavit.weights.soup import sha256

ROOT = data.default_data_root()
needs_data = pytest.mark.skipif(ROOT is None, reason="Flowers-102 not found ($ADAVIT_DATA or ../shared/data)")
TINY = ["--limit", "8", "--batch-size", "4", "--probe-epochs", "3", "--val-limit", "4", "--threads", "2"]


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_settings_draw_stays_in_range_and_repeats_with_the_seed():
    ranges = SettingsRange()
    draw = [ranges.draw(torch.Generator().manual_seed(3), 224) for _ in range(2)]
    assert draw[0] == draw[1]
    g = torch.Generator().manual_seed(0)
    for s in (ranges.draw(g, 224) for _ in range(200)):
        assert 0.15 <= s.fine_ratio <= 1.0 and 0.2 <= s.keep1 <= 1.0 and 0.2 <= s.keep2 <= 1.0
        assert s.mode in ("topk", "sample") and s.resolution == 224


def test_settings_draw_trains_the_default_at_its_share():
    default = Settings(fine_ratio=0.3, keep1=0.5, keep2=0.5)
    g = torch.Generator().manual_seed(0)
    assert all(SettingsRange(p_default=1.0).draw(g, 224, default) is default for _ in range(20))
    hits = sum(SettingsRange(p_default=0.3).draw(g, 224, default) is default for _ in range(2000))
    assert 500 < hits < 700


def test_train_without_data_exits_2_and_says_what_to_do(tmp_path, capsys):
    assert train(["--out", str(tmp_path / "run"), "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "flowers-102" in err


@needs_data
def test_train_logs_checkpoints_and_exports_a_loadable_model(tmp_path, backbone_ready):
    out, export = tmp_path / "run", tmp_path / "export.safetensors"
    assert train(["--out", str(out), "--epochs", "1", "--export", str(export), *TINY]) == 0
    log = records(out)
    assert [r["phase"] for r in log] == ["probe", "train"]
    epoch = log[1]
    assert epoch["epoch"] == 1 and epoch["epoch_wall_s"] > 0 and 0 <= epoch["val_top1_default"] <= 1
    assert epoch["mean_tokens_per_image_stages"] > 0 and epoch["device"] == "cpu"
    assert (out / "state.safetensors").exists() and json.loads((out / "state.json").read_text())["epoch"] == 0
    assert {v.dtype for v in load_file(str(export)).values()} == {torch.float16}
    card = checkpoint.read_card(export)
    assert len(card["class_names"]) == 102 and card["class_names"][0] == "pink primrose"
    assert card["default_settings"]["fine_ratio"] == 0.3 and card["recipe"]["epochs"] == 1
    model = checkpoint.load_model(export)
    x = torch.randn(2, 3, 224, 224)
    assert model(x, Settings(**card["default_settings"])).logits.shape == (2, 102)


@needs_data
def test_resume_gives_exactly_the_uninterrupted_run(tmp_path, backbone_ready):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train(["--out", str(straight), "--epochs", "2", "--no-val", *TINY]) == 0
    assert train(["--out", str(split), "--epochs", "2", "--no-val", "--stop-after", "1", *TINY]) == 0
    assert not (split / "model.safetensors").exists()  # stopped early: no final model yet
    assert train(["--out", str(split), "--epochs", "2", "--no-val", "--resume", *TINY]) == 0
    assert [r["epoch"] for r in records(split) if r["phase"] == "train"] == [1, 2]
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(split / "model.safetensors"))
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) == 0.0


@needs_data
def test_traintime_writes_both_epoch_times(tmp_path, backbone_ready, capsys):
    out = tmp_path / "timing.json"
    assert traintime.main(["--limit", "4", "--threads", "2", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert len(res["adaptive_epoch_s"]) == len(res["full_epoch_s"]) == 1
    assert res["adaptive_mean_s"] > 0 and res["full_mean_s"] > 0
    assert res["reduction"] == pytest.approx(1 - res["adaptive_mean_s"] / res["full_mean_s"])
    assert "less wall time" in capsys.readouterr().out


def test_start_from_continues_the_checkpoint_and_its_flags_must_agree():
    classes = tuple(checkpoint.read_card(checkpoint.SHIPPED)["class_names"])
    args = parse_args(["--start-from", str(checkpoint.SHIPPED), "--scorer", "learned"])
    model, shipped = build_model(args, classes), checkpoint.load_model()
    assert model.training and model.config == shipped.config
    theirs = shipped.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match=r"pass --scorer learned \(not attention\)"):
        build_model(parse_args(["--start-from", str(checkpoint.SHIPPED)]), classes)
    with pytest.raises(ValueError, match="--windows 0,0,0 \\(not 112,0,0\\)"):
        build_model(parse_args(["--start-from", str(checkpoint.SHIPPED), "--scorer", "learned",
                                "--windows", "112,0,0"]), classes)
    with pytest.raises(ValueError, match="another order"):
        build_model(args, classes[::-1])


@needs_data
def test_start_from_skips_the_probe_and_records_the_checkpoint(tmp_path):
    out, export = tmp_path / "run", tmp_path / "export.safetensors"
    assert train(["--out", str(out), "--epochs", "1", "--no-val", "--start-from", str(checkpoint.SHIPPED),
                  "--scorer", "learned", "--train-resolutions", "168,224", "--export", str(export), *TINY]) == 0
    assert [r["phase"] for r in records(out)] == ["train"]
    card = checkpoint.read_card(export)
    assert card["start_from"] == {"path": str(checkpoint.SHIPPED), "sha256": sha256(checkpoint.SHIPPED)}
    assert card["recipe"]["train_resolutions"] == "168,224"
