"""Any user upload -> one RGB PIL image, or an ImageError (a ValueError) that says what to do.

The app hands every upload (file, paste, webcam, API) to `load_image`, so each kind of bad input
gets one clear message and the server keeps serving. Decisions, each explained where it is made:
EXIF rotation applied; first frame of an animation; transparency flattened on white; 16-bit
rescaled (not clipped); CMYK/grayscale/palette converted; images below 28 px refused; huge images
refused before decoding; large ones decoded reduced; very wide or tall ones centre-cropped later
(by `adavit.data.prepare`), with a note saying how much of the image is analysed.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..core.config import REGION

MAX_BYTES = 25 * 1024 * 1024  # a phone photo is < 15 MB; beyond this an upload is not a photo
MAX_PIXELS = 60_000_000  # 60 MP; checked from the header, before any pixel is decoded
MIN_SIDE = REGION  # below one 28 px region there is nothing for the gate or the model to see
WORK_SIDE = 2048  # longer side kept for analysis: overlays are capped at 1024 px anyway
WIDE = 2.0  # aspect ratio beyond which the note says how much the centre crop leaves out
FORMATS = "JPEG, PNG, WebP, GIF, BMP or TIFF"


class ImageError(ValueError):
    """A user-facing problem with an uploaded image; the message is shown as is."""


@dataclass(frozen=True)
class Loaded:
    image: Image.Image  # RGB, upright, at most WORK_SIDE on the longer side
    notes: tuple[str, ...] = field(default=())  # what was done to it, for the UI
    original_size: tuple[int, int] = (0, 0)  # (W, H) as uploaded, after EXIF rotation


def _read_bytes(source: str | Path | bytes) -> bytes:
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"no file at {path.name!r}; upload an image ({FORMATS})")
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise ImageError(f"the file is {size / 2**20:.0f} MB; the limit is {MAX_BYTES // 2**20} MB")
        data = path.read_bytes()
    if not data:
        raise ImageError(f"the file is empty (0 bytes); upload an image ({FORMATS})")
    if len(data) > MAX_BYTES:
        raise ImageError(f"the file is {len(data) / 2**20:.0f} MB; the limit is {MAX_BYTES // 2**20} MB")
    return data


def _open(data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # PIL warns (not raises) between MAX_IMAGE_PIXELS and twice that; our own check follows
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageError(f"the image is far too large to decode safely ({e}); "
                         f"upload one under {MAX_PIXELS // 1_000_000} megapixels") from e
    except UnidentifiedImageError as e:
        raise ImageError(f"this file is not an image we can read; upload {FORMATS}") from e
    except OSError as e:
        raise ImageError(f"the image file is corrupt ({e}); upload it again or re-save it as JPEG or PNG") from e


def _check_header(im: Image.Image) -> None:
    w, h = im.size
    if w * h > MAX_PIXELS:
        raise ImageError(f"the image is {w}x{h} px ({w * h / 1e6:.0f} MP); the limit is "
                         f"{MAX_PIXELS // 1_000_000} MP, which keeps decoding safe on a small server")
    if min(w, h) < MIN_SIDE:
        raise ImageError(
            f"the image is only {w}x{h} px; it needs at least {MIN_SIDE} px on each side "
            f"(one {MIN_SIDE} px region). Smaller images hold too little to classify, and upscaling "
            "would only show the model interpolation"
        )


def _high_bit_to_uint8(im: Image.Image) -> Image.Image:
    """16-bit ('I;16*', 'I') and float ('F') grayscale -> 8 bit by rescaling, not clipping at 255."""
    a = np.asarray(im)
    if im.mode == "F":
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        a = (a - lo) / (hi - lo or 1.0)
    else:  # 16-bit data; PIL reports it as I;16 or widens it to I
        a = a.astype(np.float64) / (65535.0 if a.max() > 255 or im.mode.startswith("I;16") else 255.0)
    return Image.fromarray(np.clip(np.rint(a * 255), 0, 255).astype(np.uint8), "L")


def _to_rgb(im: Image.Image, notes: list[str]) -> Image.Image:
    mode = im.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        notes.append("16-bit or float image: rescaled to 8 bit")
        im, mode = _high_bit_to_uint8(im), "L"
    if mode == "P" and "transparency" in im.info:
        im, mode = im.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        alpha = im.getchannel("A")
        if alpha.getextrema()[0] < 255:
            notes.append("transparent areas shown on white")
        white = Image.new("RGB", im.size, (255, 255, 255))
        white.paste(im.convert("RGB"), mask=alpha)
        return white
    if mode in ("L", "1"):
        notes.append("grayscale image: the model sees it as gray RGB")
    elif mode == "CMYK":
        notes.append("CMYK image: converted to RGB")
    try:
        return im.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageError(f"colour mode {mode} is not supported ({e}); re-save the image as RGB JPEG or PNG") from e


def _reduce(im: Image.Image, notes: list[str]) -> Image.Image:
    if max(im.size) <= WORK_SIDE:
        return im
    w, h = im.size
    s = WORK_SIDE / max(w, h)
    notes.append(f"large image ({w}x{h}): analysed at {round(w * s)}x{round(h * s)}")
    size = (max(MIN_SIDE, round(w * s)), max(MIN_SIDE, round(h * s)))
    return im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _upright(im: Image.Image, notes: list[str]) -> Image.Image:
    """Apply the EXIF orientation (phones store photos sideways and set this tag)."""
    try:
        orientation = im.getexif().get(0x0112, 1)
        if orientation in (1, None):
            return im
        notes.append("EXIF orientation applied")
        return ImageOps.exif_transpose(im)
    except Exception:  # a broken EXIF block must not cost the user the photo itself
        notes.append("unreadable EXIF data ignored")
        return im


def load_image(source: str | Path | bytes | Image.Image) -> Loaded:
    """Decode, rotate upright, convert to RGB and bound the size of one uploaded image."""
    notes: list[str] = []
    if isinstance(source, Image.Image):
        im = source
    else:
        im = _open(_read_bytes(source))
    _check_header(im)
    try:
        if getattr(im, "n_frames", 1) > 1:
            im.seek(0)
            notes.append(f"animated image ({im.n_frames} frames): the first frame is used")
        if im.format == "JPEG" and max(im.size) > 2 * WORK_SIDE:
            im.draft("RGB", (WORK_SIDE, WORK_SIDE))  # decode at 1/2..1/8 scale: fast, and less memory
        im.load()
        im = _upright(im, notes)
    except Image.DecompressionBombError as e:
        raise ImageError(f"the image is far too large to decode safely ({e})") from e
    except (OSError, ValueError, SyntaxError) as e:  # truncated data, bad chunks, broken EXIF
        raise ImageError(f"the image file is corrupt or truncated ({e}); re-save it as JPEG or PNG") from e
    original = im.size
    im = _reduce(_to_rgb(im, notes), notes)
    w, h = im.size
    if max(w, h) / min(w, h) > WIDE:
        notes.append(f"very {'wide' if w > h else 'tall'} image ({w}x{h}): only the centre square "
                     f"({100 * min(w, h) / max(w, h):.0f}% of it) is analysed")
    return Loaded(im, tuple(notes), original)
