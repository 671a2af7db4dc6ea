"""The Space bundle: what `adavit space` writes, and (slow) that it boots the way a Space boots.

The slow test builds the bundle, creates a fresh venv, installs only the bundle's requirements.txt,
starts its app.py with GRADIO_CACHE_EXAMPLES=true (as Spaces set it) and asks /analyze within 60 s
of launch. When PyTorch's CPU index cannot be reached (this machine is offline) it installs the same
pins from the indexes pip can reach, with the index line left out.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adavit.app import space
from adavit.measure.mahalanobis import stats_path
from adavit.weights import checkpoint

ROOT = Path(__file__).resolve().parents[1]
BOOT_LIMIT_S = 60


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return space.build(tmp_path_factory.mktemp("space") / "adavit-explorer")


def test_bundle_holds_what_a_space_needs(bundle):
    for f in ("app.py", "README.md", "requirements.txt", ".gitattributes", "adavit/app/ui.py",
              "assets/examples/flower.jpg", "assets/PROVENANCE.md",
              "checkpoints/adavit_s14_flowers102.safetensors", "checkpoints/adavit_s14_flowers102.json"):
        assert (bundle / f).is_file(), f
    assert not list(bundle.rglob("__pycache__"))
    if stats_path(checkpoint.SHIPPED).exists():
        card = json.loads((bundle / "checkpoints/adavit_s14_flowers102.json").read_text())
        assert (bundle / "checkpoints" / card["ood"]["file"]).is_file()
    # the Spaces header is README.md's own, and sdk_version is the pinned gradio
    header = space.front_matter(bundle / "README.md")
    assert header == space.front_matter(ROOT / "README.md") and "sdk: gradio" in header
    reqs = (bundle / "requirements.txt").read_text().splitlines()
    pins = [ln for ln in (ROOT / "requirements.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert [ln for ln in reqs if ln and not ln.startswith(("#", "--"))] == pins
    assert f"--extra-index-url {space.CPU_INDEX}" in reqs
    gradio = next(p for p in pins if p.startswith("gradio=="))
    assert f"sdk_version: {gradio.split('==')[1]}" in header
    readme = (bundle / "README.md").read_text()
    assert "hf upload" in readme and "git push" in readme and "ZeroGPU" in readme and "@spaces.GPU" in readme


def test_large_files_go_through_lfs(bundle, tmp_path):
    rules = (bundle / ".gitattributes").read_text()
    assert "*.safetensors filter=lfs diff=lfs merge=lfs -text" in rules
    big, size = space.largest_plain_file(bundle)
    assert size < space.LFS_LIMIT, (big, size)
    # any other file over 10 MB gets its own LFS line, and is then no longer "plain"
    (bundle / "assets" / "big.bin").write_bytes(b"\0" * (space.LFS_LIMIT + 1))
    try:
        (bundle / ".gitattributes").write_text(space.gitattributes(bundle))
        assert "assets/big.bin filter=lfs" in (bundle / ".gitattributes").read_text()
        assert space.largest_plain_file(bundle)[1] < space.LFS_LIMIT
    finally:
        (bundle / "assets" / "big.bin").unlink()
        (bundle / ".gitattributes").write_text(rules)
    with pytest.raises(ValueError, match="not empty"):
        space.build(bundle)


def test_gpu_bundle_keeps_pypi_torch(tmp_path):
    out = space.build(tmp_path / "gpu", gpu=True)
    assert "--extra-index-url" not in (out / "requirements.txt").read_text()
    assert "suggested_hardware: zero-a10g" in (out / "README.md").read_text()


def test_on_gpu_is_the_identity_without_spaces():
    from adavit.app import gpu

    def f(x):
        return x

    assert gpu.on_gpu(f) is f  # `spaces` is not installed here (only ZeroGPU Spaces have it)
    assert gpu.device() in ("cpu", "cuda")


def reachable(url_host: str, port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((url_host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_bundle_boots_from_its_own_requirements(bundle, tmp_path, capsys):
    gradio_client = pytest.importorskip("gradio_client")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    reqs = bundle / "requirements.txt"
    online = reachable("download.pytorch.org")
    if not online:  # same pins, from what pip can reach here
        reqs = tmp_path / "requirements-offline.txt"
        reqs.write_text("".join(ln + "\n" for ln in (bundle / "requirements.txt").read_text().splitlines()
                                if not ln.startswith("--extra-index-url")))
    t = time.perf_counter()
    subprocess.run([str(py), "-m", "pip", "install", "-q", "-r", str(reqs)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    install_s = time.perf_counter() - t
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADAVIT_", "GRADIO_", "VIRTUAL_ENV"))}
    env.update(GRADIO_CACHE_EXAMPLES="true", GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1",
               GRADIO_ANALYTICS_ENABLED="False", PYTHONDONTWRITEBYTECODE="1")
    log = (tmp_path / "app.log").open("w")
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(py), "app.py"], cwd=bundle, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url, result, last = f"http://127.0.0.1:{port}/", None, None
        while result is None and time.perf_counter() - t0 < BOOT_LIMIT_S and proc.poll() is None:
            try:
                client = gradio_client.Client(url, verbose=False)
                result = client.predict(gradio_client.handle_file(str(bundle / "assets/examples/flower.jpg")),
                                        0.3, 0.5, 0.5, "top-k", 224, api_name="/analyze")
            except Exception as e:  # noqa: BLE001 - not up yet: retry until the limit
                last = e
                time.sleep(1)
        boot_s = time.perf_counter() - t0
        assert result is not None, (f"no /analyze answer within {BOOT_LIMIT_S} s ({last!r}); app log:\n"
                                    + (tmp_path / "app.log").read_text()[-3000:])
        assert result["tokens_per_stage"] == [122, 62, 32] and result["top5"][0]["probability"] > 0
        if stats_path(checkpoint.SHIPPED).exists():
            assert result["ood"]["in_distribution"] is True  # the dahlia
        coffee = client.predict(gradio_client.handle_file(str(bundle / "assets/examples/coffee.jpg")),
                                0.3, 0.5, 0.5, "top-k", api_name="/analyze")
        if stats_path(checkpoint.SHIPPED).exists():
            assert coffee["ood"]["in_distribution"] is False
        # GRADIO_CACHE_EXAMPLES=true did not make gradio run the examples at launch (they stay lazy)
        cached = list((bundle / ".gradio").rglob("*.csv")) if (bundle / ".gradio").exists() else []
        assert not cached, cached
        with capsys.disabled():
            how = "CPU index" if online else "offline: the same pins from the reachable indexes"
            print(f"\n[space bundle] fresh venv install {install_s:.0f} s ({how}); "
                  f"/analyze answered {boot_s:.1f} s after launch")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
