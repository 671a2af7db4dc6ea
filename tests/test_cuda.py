"""On a CUDA machine: the shipped model and the plug-in give the CPU's answers (skips without a GPU)."""
from __future__ import annotations

import pytest
import timm
import torch

import adavit
from adavit.core.config import Settings
from adavit.measure import flops
from adavit.weights import checkpoint

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    pytest.mark.skipif(not checkpoint.SHIPPED.exists(), reason="no shipped checkpoint"),
]
SETTINGS = [Settings(0.3, 0.5, 0.5), Settings(0.5, 0.4, 0.3, "sample", True), Settings.full()]


@pytest.fixture(scope="module", autouse=True)
def exact_matmuls():
    """TF32 would make GPU logits differ from the CPU's by ~1e-3: compare in true fp32."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.fixture(scope="module")
def models():
    return adavit.load_model(), adavit.load_model(device="cuda")


@pytest.mark.parametrize("settings", SETTINGS, ids=["default", "sample+fuse", "full"])
def test_gpu_equals_cpu_and_batch_equals_single(models, settings):
    cpu, gpu = models
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want, got = cpu(x, settings), gpu(x.cuda(), settings)
        single = torch.cat([gpu(x[i : i + 1].cuda(), settings).logits for i in range(3)])
    assert (want.logits - got.logits.cpu()).abs().max() <= 1e-4
    assert (single - got.logits).abs().max() <= 1e-4
    assert torch.equal(want.tokens_per_stage, got.tokens_per_stage.cpu())
    assert got.traces()[0].stages[0].boxes.shape == want.traces()[0].stages[0].boxes.shape
    assert flops.image_gflops(gpu, got).tolist() == pytest.approx(flops.image_gflops(cpu, want).tolist())


def test_plugin_on_gpu():
    vit = timm.create_model("deit_tiny_patch16_224", pretrained=False).cuda().eval()
    x = torch.randn(2, 3, 224, 224, device="cuda")
    with torch.inference_mode():
        want = vit(x)
        adavit.patch(vit, keep=(1.0, 1.0))
        assert (vit(x) - want).abs().max() <= 1e-5
        adavit.set_sampling(vit, keep=(0.5, 0.5))
        assert vit(x).shape == (2, 1000)
