"""Photos that are not flowers, for measuring the out-of-distribution score: read from installed wheels at run time.

Nothing is copied into this repository. Each entry names the wheel (pinned in requirements-test.txt),
the file inside it and where the picture comes from, as that package documents it. scikit-learn's
`flower.jpg` (a dahlia) is in-distribution and is not listed. Synthetic images (noise, flat colour,
rendered text, patterns) are drawn from a fixed seed.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


@dataclass(frozen=True)
class Source:
    package: str  # the import name of the wheel that ships it
    path: str  # inside the package folder
    origin: str  # what it shows and where it comes from, per the package's own README/docs

    @property
    def name(self) -> str:
        return f"{self.package}:{self.path}"


SKIMAGE = "skimage.data.{}: see its docstring"
PHOTOS: tuple[Source, ...] = (
    *(Source("skimage", f"data/{f}", f"{what} ({SKIMAGE.format(fn)})") for f, fn, what in (
        ("astronaut.png", "astronaut", "astronaut Eileen Collins, NASA, public domain"),
        ("brick.png", "brick", "brick wall, CC0Textures, CC0"),
        ("camera.png", "camera", "cameraman, grayscale, Lav Varshney, CC0"),
        ("cell.png", "cell", "cell floating in saline, quantitative phase image"),
        ("chelsea.png", "chelsea", "Chelsea the cat, Stefan van der Walt, CC0"),
        ("chessboard_RGB.png", "checkerboard", "checkerboard"),
        ("clock_motion.png", "clock", "motion-blurred wall clock, Stefan van der Walt, public domain"),
        ("coffee.png", "coffee", "coffee cup, Rachel Michetti, CC0"),
        ("coins.png", "coins", "Greek coins from Pompeii, Brooklyn Museum, no known copyright restrictions"),
        ("color.png", "colorwheel", "colour wheel"),
        ("grass.png", "grass", "grass, DeviantArt linolafett, CC0"),
        ("gravel.png", "gravel", "gravel, CC0Textures, CC0"),
        ("horse.png", "horse", "horse silhouette, openclipart, CC0"),
        ("hubble_deep_field.jpg", "hubble_deep_field", "Hubble eXtreme Deep Field, NASA, public domain"),
        ("ihc.png", "immunohistochemistry", "immunohistochemical staining of colonic glands"),
        ("logo.png", "logo", "scikit-image logo"),
        ("microaneurysms.png", "microaneurysms", "retina with lesions, grayscale, Andreas Maier, CC0"),
        ("moon.png", "moon", "surface of the moon, grayscale"),
        ("motorcycle_left.png", "stereo_motorcycle", "motorcycle, Middlebury stereo dataset"),
        ("page.png", "page", "scanned page of text, grayscale"),
        ("phantom.png", "shepp_logan_phantom", "Shepp-Logan phantom"),
        ("retina.jpg", "retina", "human retina fundus photograph, Wikimedia, CC0"),
        ("rocket.jpg", "rocket", "DSCOVR launch on Falcon 9, SpaceX, public domain"),
        ("text.png", "text", "photographed text, Wikipedia, public domain"),
    )),
    Source("sklearn", "datasets/images/china.jpg",
           "Chinese pagoda, danielbuechele on Flickr, CC BY 2.0 (scikit-learn's datasets/images/README.txt)"),
    Source("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "Grace Hopper portrait (matplotlib's sample data)"),
    Source("matplotlib", "mpl-data/sample_data/Minduka_Present_Blue_Pack.png",
           "gift box clip art by Minduka (matplotlib's sample data)"),
    *(Source("gradio", f"media_assets/images/{f}", f"{what} (gradio's demo media, in its wheel)") for f, what in (
        ("bus.png", "a bus in a street"), ("cheetah.jpg", "a cheetah"), ("cheetah1.jpg", "a cheetah's head"),
        ("lion.jpg", "a lion"), ("tower.jpg", "a tower"),
    )),
)


def package_dir(package: str) -> Path | None:
    """The installed package's folder, without importing it (skimage's import alone takes seconds)."""
    spec = importlib.util.find_spec(package)
    return Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None


def installed_photos() -> tuple[dict[str, Path], list[str]]:
    """name -> path of every listed photo that is installed, and the packages that are missing."""
    found, missing = {}, []
    for src in PHOTOS:
        folder = package_dir(src.package)
        if folder is None:
            missing.append(src.package)
        elif (folder / src.path).exists():
            found[src.name] = folder / src.path
    return found, sorted(set(missing))


def _text(words: str, size: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(200, 256, 3)))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=size // 9)
    for row in range(8):
        draw.text((8, 8 + row * size // 8), words, fill=tuple(int(v) for v in rng.integers(0, 80, 3)), font=font)
    return img


def synthetic(size: int = 320, seed: int = 0) -> dict[str, Image.Image]:
    """Noise, flat colours, rendered text and patterns: images no photo of a flower looks like."""
    rng = np.random.default_rng(seed)
    u8 = lambda a: Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))  # noqa: E731
    yy, xx = np.mgrid[:size, :size] / size
    images = {
        "synthetic:gaussian_noise": u8(rng.normal(128, 60, (size, size, 3))),
        "synthetic:uniform_noise": u8(rng.integers(0, 256, (size, size, 3))),
        "synthetic:gray_noise": u8(np.repeat(rng.normal(128, 40, (size, size, 1)), 3, 2)),
        "synthetic:salt_and_pepper": u8(255 * (rng.random((size, size, 1)) > 0.5).repeat(3, 2)),
        "synthetic:gradient": u8(np.stack([255 * xx, 255 * yy, 255 * (1 - xx)], -1)),
        "synthetic:checkerboard": u8(255 * (((xx * 8).astype(int) + (yy * 8).astype(int)) % 2)[..., None].repeat(3, 2)),
        "synthetic:stripes": u8(np.stack([127 + 127 * np.sin(40 * xx)] * 3, -1)),
        "synthetic:text_lorem": _text("Lorem ipsum dolor sit amet", size, 1),
        "synthetic:text_digits": _text("0123456789 +-*/ = 42", size, 2),
    }
    for name, rgb in {"black": (0, 0, 0), "white": (255, 255, 255), "gray": (128, 128, 128), "red": (200, 30, 30),
                      "green": (40, 160, 60), "yellow": (240, 210, 40), "sky_blue": (120, 170, 230)}.items():
        images[f"synthetic:flat_{name}"] = Image.new("RGB", (size, size), rgb)
    return images
