"""`adavit loadtest` against a tiny app served in this process: counts, latency, refusals and RSS."""
from __future__ import annotations

import os

import pytest

pytest.importorskip("gradio_client")
pytest.importorskip("psutil")
from gradio_client.exceptions import AppError  # noqa: E402
from gradio_client.utils import QueueError  # noqa: E402

from adavit.app import loadtest  # noqa: E402
from adavit.app import ui as app  # noqa: E402
from adavit.app.models import tiny  # noqa: E402
from tests.test_app_api import free_port  # noqa: E402


@pytest.fixture(scope="module")
def url():
    demo = app.build_app(tiny(), None, cache_examples=False)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield url
    finally:
        demo.close()


def test_two_clients_for_a_few_seconds(url):
    images = sorted(str(p) for p in loadtest.EXAMPLES.glob("*.jpg"))
    s = loadtest.run(url, clients=2, seconds=4, images=images, pid=os.getpid())
    assert s["errors"] == 0, s["errors_by_kind"]
    assert s["answered"] >= 4 and s["answered"] + s["refused"] == s["requests"] == len(s["outcomes"])
    assert s["throughput_per_s"] == pytest.approx(s["answered"] / s["seconds"], abs=0.01)
    lat = s["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"]
    rss = s["rss"]  # this process serves the app, so its RSS is the server's
    assert rss is not None and len(rss["samples"]) >= 3 and rss["first_window_max_mb"] > 50
    assert rss["growth_mb"] == pytest.approx(rss["last_window_max_mb"] - rss["first_window_max_mb"], abs=0.11)
    text = loadtest.report(s)
    assert text.startswith("2 clients") and ", 0 errors" in text and f"pid {os.getpid()}" in text


def test_the_listening_process_is_found_by_port(url):
    assert loadtest.server_pid(url) == os.getpid()


def test_queue_full_is_a_refusal_with_its_reason_and_the_rest_are_errors():
    status, why = loadtest.classify(QueueError("Queue is full! Please try again."))
    assert status == "refused" and "queue is full" in why and "503" in why
    assert loadtest.classify(AppError("no image"))[0] == "error"
    assert loadtest.classify(ConnectionError("refused")) == ("error", "ConnectionError: refused")
    with pytest.raises(ValueError, match="--clients"):
        loadtest.run("http://127.0.0.1:9/", 0, 1, [])
