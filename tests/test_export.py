"""ONNX export and ONNX Runtime: the graph computes what AdaViT computes (logits to 1e-4, the same tokens per
stage and kept indices), at any batch size from one file; sample mode is refused; int8 loads and runs."""
from __future__ import annotations

import onnx
import pytest
import torch

from adavit.core.config import Settings
from adavit.core.sampler import FUSED
from adavit.export import OUTPUTS, OrtModel, export_onnx
from adavit.export.check import compare
from adavit.export.cli import main as export_main
from adavit.export.graph import read_metadata
from adavit.export.quantize import quantize_int8
from adavit.weights import checkpoint

SIDE = 112  # small inputs: 16 regions, export and runs in seconds
SETTINGS = {
    "default": Settings(fine_ratio=0.3, keep1=0.5, keep2=0.5, resolution=SIDE),
    "fused": Settings(fine_ratio=0.6, keep1=0.7, keep2=0.3, fuse=True, resolution=SIDE),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, peaked_model, one_thread):
    root = tmp_path_factory.mktemp("onnx")
    return {name: OrtModel(export_onnx(peaked_model, root / f"{name}.onnx", s).path, threads=1)
            for name, s in SETTINGS.items()}


@pytest.fixture(scope="module")
def batch(make_images):
    return make_images(3, SIDE, SIDE, seed=1)


def kept_by(pred, sampler: int) -> list[list[int]]:
    """What PyTorch's sampler kept, per image, in token order (+ the fused token), from its Selection."""
    sel = pred.selections[sampler]
    return [sel.src[b][sel.kept[b]].tolist() + ([FUSED] if sel.fused[b].any() else []) for b in range(len(sel.src))]


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_onnx_runtime_matches_pytorch(exported, peaked_model, batch, name):
    settings = SETTINGS[name]
    with torch.inference_mode():
        ref = peaked_model(batch, settings)
    got = exported[name](batch)
    assert (got.logits - ref.logits).abs().max() <= 1e-4
    assert torch.equal(got.tokens_per_stage, ref.tokens_per_stage)
    assert torch.equal(got.boxes, ref.layout.boxes)
    for s, kept in enumerate(got.kept):
        assert kept.tolist() == kept_by(ref, s)
    assert got.kept[0].shape[1] + 1 == int(ref.tokens_per_stage[0, 1])  # what stage 2 ran on


def test_one_file_serves_batch_1_and_batch_3(exported, batch):
    onnx = exported["fused"]
    three = onnx(batch)
    for i in range(len(batch)):
        one = onnx(batch[i : i + 1])
        assert (one.logits - three.logits[i : i + 1]).abs().max() <= 1e-4
        assert torch.equal(one.tokens_per_stage, three.tokens_per_stage[i : i + 1])
        assert all(torch.equal(a, b[i : i + 1]) for a, b in zip(one.kept, three.kept, strict=True))


def test_the_file_says_what_it_holds(exported):
    onnx = exported["fused"]
    assert onnx.settings == SETTINGS["fused"]
    assert tuple(o.name for o in onnx.session.get_outputs()) == OUTPUTS
    assert onnx.session.get_inputs()[0].shape[0] == "batch"


def test_sample_mode_is_refused_with_the_reason(model, tmp_path):
    with pytest.raises(ValueError, match="sample mode keeps a data-dependent number of tokens.*--mode topk"):
        export_onnx(model, tmp_path / "s.onnx", Settings(mode="sample", resolution=SIDE))
    assert not (tmp_path / "s.onnx").exists()


def test_int8_file_loads_runs_and_keeps_the_token_budget(exported, batch, tmp_path):
    fp32 = exported["default"]
    int8 = OrtModel(quantize_int8(fp32.path, tmp_path / "int8.onnx"), threads=1)
    assert int8.path.stat().st_size < fp32.path.stat().st_size / 3
    assert read_metadata(int8.path) == read_metadata(fp32.path)
    ops = {n.op_type for n in onnx.load(str(int8.path)).graph.node}
    assert ops & {"DynamicQuantizeMatMul", "MatMulInteger"}, ops
    got, ref = int8(batch), fp32(batch)
    assert torch.isfinite(got.logits).all() and got.logits.shape == ref.logits.shape
    assert torch.equal(got.tokens_per_stage, ref.tokens_per_stage)  # the counts are fixed by the setting
    assert [k.shape for k in got.kept] == [k.shape for k in ref.kept]


def test_bad_input_gets_a_clear_error(exported, tmp_path):
    with pytest.raises(ValueError, match=r"exported for images of shape \(B, 3, 112, 112\).*--resolution 224"):
        exported["default"](torch.zeros(1, 3, 224, 224))
    with pytest.raises(FileNotFoundError, match="adavit export --onnx"):
        OrtModel(tmp_path / "missing.onnx")


def test_the_command_exports_checks_and_refuses(model, tmp_path, capsys):
    weights = checkpoint.save(model, tmp_path / "tiny.safetensors", half=False)
    out = tmp_path / "tiny.onnx"
    assert export_main(["--onnx", str(out), "--checkpoint", str(weights), "--resolution", str(SIDE),
                        "--keep1", "0.6", "--check", "4"]) == 0
    text = capsys.readouterr().out
    assert "tokens per stage same, kept indices same" in text and "4 images" in text
    assert OrtModel(out).settings == Settings(keep1=0.6, resolution=SIDE)
    assert export_main(["--onnx", str(out), "--checkpoint", str(weights), "--mode", "sample"]) == 2
    assert "sample mode keeps a data-dependent number" in capsys.readouterr().err
    assert export_main(["--onnx", str(tmp_path / "x.pt"), "--checkpoint", str(weights)]) == 2
    assert "--onnx must name a .onnx file" in capsys.readouterr().err


def test_shipped_checkpoint_matches_on_32_val_images(tmp_path):
    """The issue's check: the ONNX model against PyTorch on 32 Flowers-102 val images at the default setting."""
    from adavit.data import default_data_root
    from adavit.export.check import fixed_images

    if default_data_root() is None or not checkpoint.SHIPPED.exists():
        pytest.skip("needs Flowers-102 val and the shipped checkpoint")
    model = checkpoint.load_model()
    settings = Settings(**checkpoint.read_card(checkpoint.SHIPPED)["default_settings"])
    onnx = OrtModel(export_onnx(model, tmp_path / "shipped.onnx", settings).path)
    images, source = fixed_images(settings.resolution, 32)
    assert source.startswith("Flowers-102 val")
    agreement = compare(model, settings, onnx, images)
    assert agreement.exact, agreement.describe()
