"""Every kind of awkward upload, generated in a tmp dir, through `adavit.data.upload.load_image`.

`bad_inputs` and `odd_inputs` are reused by the app tests, which send the same files to the server.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adavit.data.upload import MIN_SIDE, WORK_SIDE, ImageError, load_image


def _photo(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * np.ones((h, 1, 3), np.float32)
    noise = rng.normal(0, 20, (h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def _png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb as far as any decoder knows)."""
    import io

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    """Files the app must refuse: name -> (path, a word the error message must contain)."""
    tmp.mkdir(parents=True, exist_ok=True)
    good_jpeg = tmp / "good.jpg"
    _photo(120, 90).save(good_jpeg, "JPEG")
    cases = {
        "empty": (tmp / "empty.png", b"", "empty"),
        "text": (tmp / "notes.txt", b"this is not an image\n" * 10, "not an image"),
        "corrupt_jpeg": (tmp / "corrupt.jpg", good_jpeg.read_bytes()[:400], "corrupt"),
        "garbage_png": (tmp / "garbage.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "not an image"),
        "bomb": (tmp / "bomb.png", _png_with_size(20000, 20000), "too large"),
        "bomb_under_pil_limit": (tmp / "bomb2.png", _png_with_size(12000, 9000), "limit"),
        "tiny": (tmp / "tiny.png", None, f"at least {MIN_SIDE} px"),
    }
    Image.new("RGB", (10, 10), (200, 30, 30)).save(tmp / "tiny.png")
    out = {}
    for name, (path, data, word) in cases.items():
        if data is not None:
            path.write_bytes(data)
        out[name] = (path, word)
    return out


def odd_inputs(tmp: Path) -> dict[str, Path]:
    """Files the app must accept: grayscale, RGBA, 16-bit, CMYK, EXIF-rotated, animated, panorama."""
    tmp.mkdir(parents=True, exist_ok=True)
    paths = {}
    photo = _photo(160, 120)
    paths["grayscale"] = tmp / "gray.png"
    photo.convert("L").save(paths["grayscale"])
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 160, dtype=np.uint8), (120, 1))))
    paths["rgba"] = tmp / "rgba.png"
    rgba.save(paths["rgba"])
    paths["png16"] = tmp / "gray16.png"
    Image.fromarray(np.tile(np.linspace(0, 65535, 160).astype(np.uint16), (120, 1))).save(paths["png16"])
    paths["cmyk"] = tmp / "cmyk.jpg"
    photo.convert("CMYK").save(paths["cmyk"], "JPEG")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": stored 160x120, shown 120x160
    paths["exif_rotated"] = tmp / "rotated.jpg"
    photo.save(paths["exif_rotated"], "JPEG", exif=exif.tobytes())
    frames = [Image.new("RGB", (64, 48), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    paths["animated_gif"] = tmp / "anim.gif"
    frames[0].save(paths["animated_gif"], save_all=True, append_images=frames[1:], duration=100, loop=0)
    paths["panorama"] = tmp / "pano.jpg"
    _photo(2400, 200).save(paths["panorama"], "JPEG")
    return paths


BAD = ["empty", "text", "corrupt_jpeg", "garbage_png", "bomb", "bomb_under_pil_limit", "tiny"]


@pytest.mark.parametrize("case", BAD)
def test_bad_inputs_raise_clear_errors(tmp_path, case):
    path, word = bad_inputs(tmp_path)[case]
    with pytest.raises(ImageError, match=word):
        load_image(path)


def test_missing_file_and_empty_bytes():
    with pytest.raises(ImageError, match="no file"):
        load_image("/nonexistent/photo.jpg")
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")


def test_image_error_is_value_error():
    assert issubclass(ImageError, ValueError)  # the project's convention for bad user input


def test_grayscale_becomes_gray_rgb(tmp_path):
    loaded = load_image(odd_inputs(tmp_path)["grayscale"])
    a = np.asarray(loaded.image)
    assert loaded.image.mode == "RGB" and a.shape == (120, 160, 3)
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    assert any("grayscale" in n for n in loaded.notes)


def test_rgba_is_flattened_on_white(tmp_path):
    loaded = load_image(odd_inputs(tmp_path)["rgba"])
    a = np.asarray(loaded.image)
    assert loaded.image.mode == "RGB"
    assert (a[:, 0] == 255).all()  # alpha 0 in the first column: pure white
    assert any("transparent" in n for n in loaded.notes)


def test_16bit_png_is_rescaled_not_clipped(tmp_path):
    loaded = load_image(odd_inputs(tmp_path)["png16"])
    a = np.asarray(loaded.image)[..., 0].astype(int)
    assert a[0, 0] == 0 and a[0, -1] == 255
    assert abs(a[0, 80] - 128) <= 2  # mid-range stays mid-gray (clipping would make it 255)
    assert any("16-bit" in n for n in loaded.notes)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = odd_inputs(tmp_path)["cmyk"]
    assert Image.open(path).mode == "CMYK"
    loaded = load_image(path)
    assert loaded.image.mode == "RGB" and loaded.image.size == (160, 120)
    ref = np.asarray(_photo(160, 120), np.float32)
    assert np.abs(np.asarray(loaded.image, np.float32) - ref).mean() < 25  # colours survive, roughly


def test_exif_rotation_is_applied(tmp_path):
    loaded = load_image(odd_inputs(tmp_path)["exif_rotated"])
    assert loaded.image.size == (120, 160)
    assert loaded.original_size == (120, 160)
    assert any("EXIF" in n for n in loaded.notes)


def test_animated_gif_uses_first_frame(tmp_path):
    loaded = load_image(odd_inputs(tmp_path)["animated_gif"])
    r, g, b = np.asarray(loaded.image)[10, 10]
    assert r > 200 and g < 50 and b < 50
    assert any("3 frames" in n for n in loaded.notes)


def test_panorama_note_says_what_is_analysed(tmp_path):
    loaded = load_image(odd_inputs(tmp_path)["panorama"])
    assert loaded.image.size == (WORK_SIDE, 171)  # longer side reduced, aspect kept
    assert any("wide" in n and "centre square" in n for n in loaded.notes)


def test_large_image_is_reduced_for_analysis(tmp_path):
    path = tmp_path / "big.jpg"
    _photo(4400, 3000).save(path, "JPEG", quality=80)
    loaded = load_image(path)
    assert max(loaded.image.size) == WORK_SIDE
    assert loaded.original_size[0] >= WORK_SIDE  # draft decoding may already shrink it
    assert any("large image" in n for n in loaded.notes)


def test_plain_rgb_has_no_notes(tmp_path):
    path = tmp_path / "ok.png"
    _photo(300, 200).save(path)
    loaded = load_image(path)
    assert loaded.notes == () and loaded.image.size == (300, 200)
    assert np.array_equal(np.asarray(loaded.image), np.asarray(Image.open(path)))


def test_pil_image_and_bytes_sources(tmp_path):
    photo = _photo(64, 64)
    assert np.array_equal(np.asarray(load_image(photo).image), np.asarray(photo))
    path = tmp_path / "p.png"
    photo.save(path)
    assert np.array_equal(np.asarray(load_image(path.read_bytes()).image), np.asarray(photo))
