"""The real UI in headless Chromium: upload, drag a slider, toggle a layer, survive a bad file.

`test_ui_*` runs a tiny random model (fast, no checkpoint). `test_screenshots` drives the app as
`python app.py` builds it (shipped checkpoint, data root when present) and rewrites
docs/screenshots/: `ADAVIT_SCREENSHOTS=1 pytest -m screenshots tests/e2e`.
"""
from __future__ import annotations

import io
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adavit.app import ui as app
from adavit.app.models import tiny
from tests.e2e.conftest import serve

pytestmark = pytest.mark.e2e
REPO = app.ROOT
EXAMPLES = REPO / "assets" / "examples"
SHOTS = REPO / "docs" / "screenshots"
TIMEOUT = 90_000  # ms; the machine may be busy with training
VIEWS = ("patching", "ats1", "ats2")


def _view(page, name: str) -> np.ndarray:
    src = page.locator(f"#view-{name} img").get_attribute("src")
    return np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"))


def _srcs(page) -> list[str]:
    return [page.locator(f"#view-{v} img").get_attribute("src") or "" for v in VIEWS]


def _wait_views_change(page, old: list[str]) -> None:
    """Every view shows a new file (each result writes new ones, even when the pixels are the same)."""
    page.wait_for_function(
        "([ids, old]) => ids.every((id, i) => { const e = document.querySelector(`#view-${id} img`);"
        " return e && e.getAttribute('src') !== old[i] && e.complete })",
        arg=[list(VIEWS), old], timeout=TIMEOUT)


def _wait_text_change(page, selector: str, old: str) -> str:
    page.wait_for_function(
        "([sel, old]) => { const e = document.querySelector(sel);"
        " return e && e.innerText.trim() && e.innerText !== old }",
        arg=[selector, old], timeout=TIMEOUT)
    return page.locator(selector).inner_text()


def _stats(page) -> str:
    return page.locator("#stats").inner_text()


def _tokens(stats: str) -> list[int]:
    return [int(t) for t in re.search(r"(\d+) → (\d+) → (\d+)", stats).groups()]


def _drag(page, elem_id: str, value: float, lo: float, hi: float) -> float:
    """Press on the range input where `value` lies and release: the browser fires input + pointerup."""
    track = page.locator(f"#{elem_id} input[type=range]")
    box = track.bounding_box()
    y = box["y"] + box["height"] / 2
    start = page.locator(f"#{elem_id} input[type=number]").input_value()
    x0 = box["x"] + box["width"] * (float(start) - lo) / (hi - lo)
    x1 = box["x"] + box["width"] * (value - lo) / (hi - lo)
    page.mouse.move(x0, y)
    page.mouse.down()
    page.mouse.move(x1, y, steps=6)
    page.mouse.up()
    return float(page.locator(f"#{elem_id} input[type=number]").input_value())


def _upload(page, path: Path) -> None:
    page.locator("#input-image input[type=file]").set_input_files(str(path))


def _ready(page) -> None:
    page.wait_for_selector("#view-ats2 img", timeout=TIMEOUT)
    page.wait_for_function("() => /→/.test(document.querySelector('#stats')?.innerText || '')", timeout=TIMEOUT)


@pytest.fixture(scope="module")
def tiny_url():
    demo = app.build_app(tiny(), None, cache_examples=False)
    try:
        yield serve(demo)
    finally:
        demo.close()


def test_ui_upload_then_slider_release_updates_views_and_numbers(browser, tiny_url, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1700})
    page.goto(tiny_url)
    _ready(page)  # the page analyses its default photo on load
    top5_before, srcs = page.locator("#top5").inner_text(), _srcs(page)
    flower = {v: _view(page, v) for v in VIEWS}

    _upload(page, EXAMPLES / "coffee.jpg")
    _wait_views_change(page, srcs)
    assert _wait_text_change(page, "#top5", top5_before) != top5_before
    stats, srcs = _stats(page), _srcs(page)
    assert _tokens(stats) == [161, 81, 41]
    before = {v: _view(page, v) for v in VIEWS}
    assert before["patching"].shape == (512, 512, 3)  # the 400 px square crop of coffee.jpg, enlarged
    assert not np.array_equal(before["ats1"][:511], flower["ats1"][:511])

    keep = _drag(page, "keep1", 0.2, 0.05, 1.0)
    assert keep < 0.45  # the slider moved
    _wait_views_change(page, srcs)
    stats2, srcs = _stats(page), _srcs(page)
    n1 = 1 + math.ceil(keep * 160 - 1e-9)
    assert _tokens(stats2) == [161, n1, 1 + math.ceil(0.5 * (n1 - 1) - 1e-9)]
    after = {v: _view(page, v) for v in VIEWS}
    assert np.array_equal(after["patching"], before["patching"])  # a keep slider does not touch patching
    assert not np.array_equal(after["ats1"], before["ats1"])
    assert not np.array_equal(after["ats2"], before["ats2"])
    page.screenshot(path=str(tmp_path / "after_slider.png"), full_page=True)

    page.get_by_label("grid").uncheck()  # layer toggle: redraw only, same numbers
    _wait_views_change(page, srcs)
    assert _tokens(_stats(page)) == _tokens(stats2)
    no_grid = _view(page, "patching")
    assert no_grid.shape == after["patching"].shape and not np.array_equal(no_grid, after["patching"])
    page.close()


def test_ui_bad_file_shows_a_message_and_the_next_upload_works(browser, tiny_url, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.goto(tiny_url)
    _ready(page)
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes((EXAMPLES / "flower.jpg").read_bytes()[:300])
    _upload(page, corrupt)
    page.wait_for_function("() => /Cannot analyse/.test(document.querySelector('#status')?.innerText || '')",
                           timeout=TIMEOUT)
    assert "corrupt" in page.locator("#status").inner_text()
    assert page.locator("#stats").inner_text().strip() == ""
    _upload(page, EXAMPLES / "chelsea.jpg")
    page.wait_for_function("() => /→/.test(document.querySelector('#stats')?.innerText || '')", timeout=TIMEOUT)
    assert "Cannot analyse" not in page.locator("#status").inner_text()
    page.close()


@pytest.mark.screenshots
@pytest.mark.skipif(os.environ.get("ADAVIT_SCREENSHOTS") != "1",
                    reason="rewrites docs/screenshots/ from the real app: set ADAVIT_SCREENSHOTS=1")
def test_screenshots(browser):
    """The README's screenshots, from the app exactly as `python app.py` builds it."""
    demo = app.build_app(cache_examples=False)
    url = serve(demo)
    try:
        page = browser.new_page(viewport={"width": 1440, "height": 1500}, device_scale_factor=1)
        page.goto(url)
        _ready(page)
        page.wait_for_function("() => /Accuracy at this setting/"
                               ".test(document.querySelector('#accuracy')?.innerText || '')",
                               timeout=600_000)  # first live accuracy decodes the val subset
        stats = _stats(page)
        _drag(page, "keep1", 0.3, 0.05, 1.0)
        _wait_text_change(page, "#stats", stats)
        acc = page.locator("#accuracy").inner_text()
        page.wait_for_function("([old]) => document.querySelector('#accuracy').innerText !== old", arg=[acc],
                               timeout=600_000)
        page.wait_for_function("() => document.querySelectorAll('.pending').length === 0", timeout=600_000)
        page.wait_for_timeout(1500)  # plotly transition
        SHOTS.mkdir(parents=True, exist_ok=True)
        for old in SHOTS.glob("*.*"):
            old.unlink()  # no stale shot survives a regeneration
        page.screenshot(path=str(SHOTS / "app.jpg"), full_page=True, type="jpeg", quality=85)
        page.locator(".adavit-views").screenshot(path=str(SHOTS / "views.jpg"), type="jpeg", quality=90)
        page.locator("#pareto").screenshot(path=str(SHOTS / "pareto.png"))
        page.close()
    finally:
        demo.close()
    for name in ("app.jpg", "views.jpg", "pareto.png"):
        assert Image.open(SHOTS / name).size[0] > 600
