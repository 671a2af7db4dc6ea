"""The speed table's cells and the ONNX evaluation: every runtime x precision cell runs the same model,
fp32 exports give PyTorch's logits, and GFLOPs read from an export equal PyTorch's closed form."""
from __future__ import annotations

import json

import pytest
import torch

from adavit.core.config import Settings
from adavit.export import OrtModel, export_onnx
from adavit.measure import bench, flops
from adavit.measure.onnx_eval import image_gflops, settings_of
from adavit.measure.runtimes import Cell, build, cells_for, ratios
from adavit.weights import checkpoint

SIDE = 112


def test_cells_cover_the_table():
    every = cells_for(None, "fp32", every=True)
    assert len(set(every)) == 8 and {c.model for c in every} == {"full", "adavit"}
    one = cells_for("onnxruntime", "int8", every=False)
    assert [c.key for c in one] == [("torch", "fp32", "full"), ("torch", "fp32", "adavit"),
                                    ("onnxruntime", "int8", "full"), ("onnxruntime", "int8", "adavit")]
    assert len(cells_for("torch", "fp32", every=False)) == 2


def test_ratios_compare_within_a_runtime_and_across():
    rows = [{"runtime": r, "precision": "fp32", "model": m, "latency_ms_b1": b1, "latency_ms_b32": b32}
            for r, m, b1, b32 in [("torch", "full", 80, 2800), ("torch", "adavit", 30, 700),
                                  ("onnxruntime", "full", 60, 2000), ("onnxruntime", "adavit", 15, 500)]]
    assert ratios(rows) == {"torch_fp32_b1_full_over_adavit": 2.67, "torch_fp32_b32_full_over_adavit": 4.0,
                            "onnxruntime_fp32_b1_full_over_adavit": 4.0, "onnxruntime_fp32_b32_full_over_adavit": 4.0,
                            "adavit_fp32_b1_eager_over_onnxruntime": 2.0}


def test_every_cell_runs_the_same_model(peaked_model, make_images, tmp_path, one_thread):
    settings = Settings(fine_ratio=0.3, keep1=0.5, keep2=0.5, resolution=SIDE)
    plain = bench.plain_vit(peaked_model, SIDE)
    fns = build(cells_for(None, "fp32", every=True), peaked_model, plain, settings, tmp_path, SIDE)
    x = make_images(2, SIDE, SIDE)
    with torch.inference_mode():
        ref = {"full": plain(x), "adavit": peaked_model(x, settings).logits}
        for (runtime, precision, model), fn in fns.items():
            out = fn(x)
            logits = out[0] if runtime == "onnxruntime" else out if model == "full" else out.logits
            logits = torch.as_tensor(logits)
            assert logits.shape == ref[model].shape
            if precision == "fp32":
                assert (logits - ref[model]).abs().max() <= 1e-4, (runtime, model)
            else:  # int8 drifts, but stays a model of the same function
                assert torch.isfinite(logits).all()
                assert torch.corrcoef(torch.stack([logits.flatten(), ref[model].flatten()]))[0, 1] > 0.9


def test_gflops_from_an_export_equal_pytorchs(peaked_model, make_images, tmp_path, one_thread):
    settings = Settings(fine_ratio=0.6, keep1=0.7, keep2=0.3, fuse=True, resolution=SIDE)
    onnx = OrtModel(export_onnx(peaked_model, tmp_path / "f.onnx", settings).path, threads=1)
    assert settings_of(onnx.path) == settings
    x = make_images(3, SIDE, SIDE)
    with torch.inference_mode():
        want = flops.image_gflops(peaked_model, peaked_model(x, settings))
    got = image_gflops(flops.Arch.of(peaked_model), onnx(x), (SIDE, SIDE))
    assert got.tolist() == pytest.approx(want.tolist(), rel=1e-12)


def test_bench_runtime_writes_the_issue_json(model, tmp_path, capsys, one_thread):
    """`--all` is the same code over all eight cells (test_every_cell_runs_the_same_model builds them all)."""
    weights = checkpoint.save(model, tmp_path / "tiny.safetensors", half=False)
    out = tmp_path / "bench.json"
    code = bench.main(["--runtime", "onnxruntime", "--precision", "int8", "--runs", "1", "--resolution", "56",
                       "--full-resolution", "56", "--checkpoint", str(weights), "--json", str(out), "--threads", "1"])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["settings"]["resolution"] == 56
    keys = {"runtime", "precision", "model", "latency_ms_b1", "latency_ms_b32", "gflops"}
    assert all(keys <= set(c) for c in result["cells"])
    assert [(c["runtime"], c["precision"], c["model"]) for c in result["cells"]] == [
        ("torch", "fp32", "full"), ("torch", "fp32", "adavit"),
        ("onnxruntime", "int8", "full"), ("onnxruntime", "int8", "adavit")]
    full, ada = result["cells"][0]["gflops"], result["cells"][1]["gflops"]
    assert result["cells"][2]["gflops"] == full and result["cells"][3]["gflops"] == ada < full
    assert set(result["ratios"]) == {"torch_fp32_b1_full_over_adavit", "torch_fp32_b32_full_over_adavit",
                                     "onnxruntime_int8_b1_full_over_adavit", "onnxruntime_int8_b32_full_over_adavit"}
    assert result["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert result["machine"]["cpu_model"]
    assert "onnxruntime  int8" in capsys.readouterr().out


def test_bench_sets_a_larger_adavit_input_against_the_full_token_side(model, tmp_path, capsys, one_thread):
    """A setting may decode the photos larger (compare --sides); the speed-up stays against every token at
    --full-resolution, on the same photos at that side."""
    weights = checkpoint.save(model, tmp_path / "tiny.safetensors", half=False)
    out = tmp_path / "bench.json"
    assert bench.main(["--runs", "1", "--resolution", "112", "--full-resolution", "56", "--fine-ratio", "0",
                       "--keep1", "1", "--keep2", "1", "--checkpoint", str(weights), "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["full_resolution"] == 56 and r["settings"]["resolution"] == 112
    assert r["full"]["tokens_per_stage"] == [17] * 3 == r["adavit_full"]["tokens_per_stage"]  # 4 x 4 patches + CLS
    assert r["adavit"]["tokens_per_stage"] == [17] * 3  # 112 px, every region coarse: 4 x 4 regions + CLS
    assert r["speedup"]["gflops"] == pytest.approx(r["full"]["gflops"] / r["adavit"]["gflops"], abs=0.01)
    assert "decoded at 56 px for full, 112 px for adavit" in r["input"]
    assert bench.main(["--runs", "1", "--full-resolution", "50", "--checkpoint", str(weights)]) == 2
    assert "--full-resolution must be a multiple of the 14 px patch" in capsys.readouterr().out


def test_bench_refuses_to_export_sample_mode(model, tmp_path, capsys):
    weights = checkpoint.save(model, tmp_path / "tiny.safetensors", half=False)
    assert bench.main(["--runtime", "onnxruntime", "--mode", "sample", "--checkpoint", str(weights),
                       "--resolution", str(SIDE)]) == 2
    assert "sample mode keeps a data-dependent number" in capsys.readouterr().out


def test_a_cell_is_named_for_its_table_row():
    assert Cell("onnxruntime", "int8", "adavit").name() == "onnxruntime int8 adavit"


def test_batch1_speedup_times_one_setting_and_leaves_the_layout_as_it_was(model, make_images, one_thread):
    """compare's --default-speedup screen: bench's ratio with bench's CPU layout, which it undoes."""
    settings = Settings(fine_ratio=0.1, keep1=0.5, keep2=0.25)  # ~20 tokens in stage 3: the column-major range
    plain = bench.plain_vit(model, 224)
    before = {k: v.stride() for k, v in model.state_dict().items()}
    ratio = bench.batch1_speedup(model, plain, settings, make_images(1, 224, 224), make_images(1, 224, 224), runs=2)
    assert ratio > 0 and ratio == ratio  # a finite ratio of two medians
    assert {k: v.stride() for k, v in model.state_dict().items()} == before
