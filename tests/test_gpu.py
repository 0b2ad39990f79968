"""On a CUDA device (skipped without one; ``pytest -m gpu``): the same answers as on the CPU."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import small_cnn
from torch import nn

from salmap.attacks import BIM, FGSM, JSMA, SegmentationJSMA
from salmap.cli import main
from salmap.devices import resolve_device
from salmap.explain import Occlusion
from salmap.gradients import frozen, loss_grad

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture()
def fp32():
    """Full float32 convolutions and products (no TF32) for the duration of a test."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def on_cuda(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).cuda().eval()


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_occlusion_on_cuda_equals_the_cpu_maps(fp32, digits_model):
    model, x, y = digits_model
    x, y = x[:5], y[:5]
    before = torch.backends.cudnn.benchmark
    # 49 positions x 5 images in batches of 16: the last batch is padded to the fixed shape
    cpu = Occlusion(model, patch=2, stride=1, batch_size=16).attribute(x, target=y)
    gpu = Occlusion(on_cuda(model), patch=2, stride=1, batch_size=16).attribute(x.cuda(), target=y.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)
    assert torch.backends.cudnn.benchmark == before  # tuned for the call only


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_occlusion_half_precision_on_cuda_correlates_with_float32(digits_model, precision):
    model, x, y = digits_model
    model = on_cuda(model)
    x, y = x[:8].cuda(), y[:8].cuda()
    full = Occlusion(model, patch=2, stride=1).attribute(x, target=y)
    half = Occlusion(model, patch=2, stride=1, precision=precision).attribute(x, target=y)
    assert half.dtype == torch.float32
    assert min(corr(half[i], full[i]) for i in range(8)) >= 0.999


def test_fgsm_on_cuda_differs_from_the_cpu_only_where_the_gradient_is_noise(fp32, digits_model):
    model, x, y = digits_model
    cpu = FGSM(model, eps=0.1)(x, y=y).x_adv
    gpu = FGSM(on_cuda(model), eps=0.1)(x.cuda(), y=y.cuda()).x_adv.cpu()
    with frozen(model):
        _, grad = loss_grad(model, x, y)
    differ = gpu != cpu
    assert differ.float().mean() < 1e-3
    if differ.any():  # sign(0) = 0 and rounding near 0 are the only sources of disagreement
        assert float(grad.abs()[differ].max()) < 1e-4 * float(grad.abs().max())


def test_iterative_attacks_on_cuda_match_the_cpu(fp32, digits_model):
    model, x, y = digits_model
    x, y = x[:40], y[:40]
    for attack in (lambda m: BIM(m, eps=0.1, steps=5), lambda m: JSMA(m, gamma=0.1, strict_targets=False)):
        cpu = attack(model)(x, y=y)
        gpu = attack(on_cuda(model))(x.cuda(), y=y.cuda())
        same = (gpu.x_adv.cpu() == cpu.x_adv).flatten(1).all(1)
        assert same.float().mean() >= 0.9
        assert torch.equal(gpu.success.cpu()[same], cpu.success[same])


def test_segmentation_jsma_on_cuda_matches_the_cpu(fp32):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 3, 3, padding=1)).eval()
    x = torch.rand(3, 1, 12, 12)
    with torch.no_grad():
        target = (model(x).argmax(1) + 1) % 3
    # exact search: the batched selections on CUDA pick the CPU's sequential pairs
    attack = lambda m: SegmentationJSMA(m, gamma=0.2, k=3, max_iterations=4)  # noqa: E731
    cpu = attack(model)(x, target=target)
    gpu = attack(on_cuda(model))(x.cuda(), target=target.cuda())
    torch.testing.assert_close(gpu.x_adv.cpu(), cpu.x_adv)
    assert torch.equal(gpu.iterations.cpu(), cpu.iterations)


def test_small_cnn_call_stays_on_cuda(fp32):
    model = on_cuda(small_cnn())
    x = torch.rand(4, 1, 8, 8, device="cuda")
    result = FGSM(model, eps=0.1)(x, y=torch.arange(4, device="cuda"))
    assert result.x_adv.device.type == result.success.device.type == result.l0.device.type == "cuda"


def test_device_auto_picks_cuda_and_says_so(tmp_path, capsys):
    assert resolve_device("auto") == "cuda"
    assert main(["attack", "fgsm", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().out.startswith("device: cuda:0 (")


def test_sync_free_attacks_refuse_labels_out_of_range_on_cuda(digits_model):
    """Labels read after the work are clamped until then: out-of-range labels give the
    ValueError, not a device-side assert in the loss's kernel (which would end the process's
    CUDA context), and the device stays usable."""
    model, x, y = digits_model
    model, x = on_cuda(model), x[:4].cuda()
    bad = torch.tensor([0, 1, 10, -1], device="cuda")
    for attack in (FGSM(model, eps=0.1), BIM(model, eps=0.1, steps=2)):
        with pytest.raises(ValueError, match=r"class indices in \[0, 9\], got values in \[-1, 10\]"):
            attack(x, y=bad)
    torch.cuda.synchronize()
    assert FGSM(model, eps=0.1)(x, y=y[:4].cuda()).x_adv.device.type == "cuda"
