"""Headless Chromium (Debian's `chromium`, driven by Playwright) against the app served in-process.

Skips cleanly when the browser or Playwright is missing. `playwright install` is not needed:
the system browser is launched through `executable_path`.
"""
from __future__ import annotations

import os
import shutil
import socket

import pytest

CHROMIUM = os.environ.get("ADAVIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def pytest_configure(config):
    config.addinivalue_line("markers", "screenshots: regenerates docs/screenshots/ from the real app "
                                       "(run with ADAVIT_SCREENSHOTS=1 pytest -m screenshots tests/e2e)")


@pytest.fixture(scope="session")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(demo) -> str:
    from adavit.app import ui as app

    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                            max_file_size=app.MAX_FILE, css=app.CSS)
    return url
