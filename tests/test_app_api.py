"""The app served in-process on a free localhost port, driven through gradio_client's /analyze.

A tiny random AdaViT is injected (no checkpoint, no data, fast); the numbers it returns are
checked against the model called directly, so the endpoint is tested for what it computes.
"""
from __future__ import annotations

import socket
import threading

import pytest
import torch

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

from adavit.app import ui as app  # noqa: E402
from adavit.app.analysis import make_settings  # noqa: E402
from adavit.app.models import tiny  # noqa: E402
from adavit.data import prepare  # noqa: E402
from adavit.data.upload import load_image  # noqa: E402
from tests.test_image import bad_inputs, odd_inputs  # noqa: E402

EXAMPLES = app.EXAMPLES
FLOWER, COFFEE = str(EXAMPLES / "flower.jpg"), str(EXAMPLES / "coffee.jpg")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served():
    model = tiny()
    demo = app.build_app(model, None, cache_examples=False)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                            quiet=True, max_file_size=app.MAX_FILE)
    try:
        yield url, model
    finally:
        demo.close()


@pytest.fixture(scope="module")
def client(served):
    return Client(served[0], verbose=False)


def call(client: Client, image: str, *args):
    return client.predict(handle_file(image), *args, api_name="/analyze")


def test_analyze_returns_what_the_model_computes(client, served):
    _, app_model = served
    r = call(client, FLOWER, 0.5, 0.5, 0.5, "top-k")
    assert {"top5", "tokens_per_stage", "gflops", "gflops_full", "latency_ms", "latency_ms_full"} <= r.keys()
    # 8x8 regions at 224 px, half split into 4 fine tokens: 32*4 + 32 = 160 (+CLS); each ATS keeps half
    assert r["tokens_per_stage"] == [161, 81, 41]
    settings = make_settings(0.5, 0.5, 0.5, "top-k")
    with torch.inference_mode():
        pred = app_model.model(prepare(load_image(FLOWER).image, 224).tensor, settings)
    probs = pred.logits[0].softmax(-1)
    top = torch.argsort(probs, descending=True, stable=True)[:5]
    assert [t["label"] for t in r["top5"]] == [app_model.class_names[i] for i in top]
    assert [t["probability"] for t in r["top5"]] == pytest.approx(probs[top].tolist(), abs=1e-6)
    assert 0 < r["gflops"] < r["gflops_full"]
    assert r["latency_ms"] > 0 and r["latency_ms_full"] > 0


def test_analyze_modes_and_optional_resolution(client):
    fused = call(client, FLOWER, 0.5, 0.5, 0.5, "top-k + fuse")
    # each sampler adds its fused token; ATS2 then keeps ceil(0.5 * 81) of the 80 kept + 1 fused
    assert fused["tokens_per_stage"] == [161, 82, 43]
    sampled = call(client, COFFEE, 0.25, 0.3, 0.5, "sample", 280)
    assert sampled["settings"]["resolution"] == 280 and sampled["settings"]["mode"] == "sample"
    assert sampled["tokens_per_stage"][0] == 1 + 75 + 4 * 25  # 10x10 regions at 280 px, 25 split in 4
    assert sampled["tokens_per_stage"][1] <= 1 + 53  # sampling keeps at most ceil(0.3 * 175) distinct tokens


@pytest.mark.parametrize("args, word", [
    ((0.5, 1.5, 0.5, "top-k"), "1.5"),  # outside the slider's range
    ((0.5, 0.5, 0.5, "median"), "median"),  # not a mode
])
def test_analyze_rejects_bad_settings(client, args, word):
    with pytest.raises(Exception, match=word):
        call(client, FLOWER, *args)


def test_eight_clients_ten_requests_each(served):
    url, _ = served
    errors, results = [], {}

    def work(i: int) -> None:
        c = Client(url, verbose=False)
        for j in range(10):
            image, keep = (FLOWER, COFFEE)[(i + j) % 2], (0.3, 0.5, 0.7)[j % 3]
            try:
                r = call(c, image, 0.5, keep, 0.5, "top-k")
                results.setdefault((image, keep), []).append((tuple(r["tokens_per_stage"]), r["top5"][0]["label"]))
            except Exception as e:  # noqa: BLE001 - every failure is collected and reported
                errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=170)
    assert not errors, errors[:3]
    assert sum(len(v) for v in results.values()) == 80
    for key, answers in results.items():  # the same request always gets the same answer
        assert len(set(answers)) == 1, (key, set(answers))


def test_bad_inputs_get_clear_errors_and_the_server_keeps_serving(client, tmp_path):
    for path, word in bad_inputs(tmp_path / "bad").values():
        with pytest.raises(Exception, match=word):
            call(client, str(path), 0.5, 0.5, 0.5, "top-k")
    expect_note = {"grayscale": "grayscale", "rgba": "transparent", "png16": "16-bit", "cmyk": "CMYK",
                   "exif_rotated": "EXIF", "animated_gif": "first frame", "panorama": "centre square"}
    for name, path in odd_inputs(tmp_path / "odd").items():
        r = call(client, str(path), 0.5, 0.5, 0.5, "top-k")
        assert r["tokens_per_stage"] == [161, 81, 41], name
        assert any(expect_note[name] in n for n in r["notes"]), (name, r["notes"])
    assert call(client, FLOWER, 0.5, 0.5, 0.5, "top-k")["tokens_per_stage"] == [161, 81, 41]
