"""What a call costs: forward passes counted, the deferred adversarial prediction, devices."""

from __future__ import annotations

import pytest
import torch
from conftest import small_cnn
from torch import nn

from salmap.attacks import BIM, FGSM, JSMA, PGD
from salmap.cli import main
from salmap.devices import describe_device, resolve_device


class Counting(nn.Module):
    """Wraps a model and counts its forward passes (and the samples they saw)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.calls, self.samples = model, 0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.samples += x.shape[0]
        return self.model(x)


@pytest.fixture()
def counted():
    model = small_cnn()
    x = torch.rand(6, 1, 8, 8)
    model(x)  # materialise the lazy layer
    return Counting(model.eval()), x, torch.arange(6) % 10


def test_fgsm_costs_one_forward_and_one_backward(counted):
    model, x, y = counted
    result = FGSM(model, eps=0.1)(x, y=y)
    assert model.calls == 1  # the clean prediction is the gradient step's forward pass
    success = result.success  # the adversarial prediction: one more pass, on first access only
    assert model.calls == 2
    assert torch.equal(result.success, success) and model.calls == 2
    with torch.no_grad():
        after = model.model(result.x_adv).argmax(1)
        clean = model.model(x).argmax(1)
    assert torch.equal(result.pred_after, after)
    assert torch.equal(result.pred_before, clean)
    assert torch.equal(success, after != y)


@pytest.mark.parametrize("attack, passes", [
    (lambda m: PGD(m, eps=0.1, steps=5), 1 + 5),  # clean prediction + one forward per step
    (lambda m: PGD(m, eps=0.1, steps=5, random_start=False), 5),  # the first step is at the clean input
    (lambda m: BIM(m, eps=0.1, steps=4), 4),
])
def test_iterative_attacks_spend_one_forward_per_step(counted, attack, passes):
    model, x, y = counted
    result = attack(model)(x, y=y)
    assert model.calls == passes
    result.summary()
    assert model.calls == passes + 1


def test_reading_success_after_the_model_changed_is_an_error(counted):
    model, x, y = counted
    result = FGSM(model, eps=0.1)(x, y=y)
    kept = FGSM(model, eps=0.1)(x, y=y)
    expected = kept.success.clone()
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # what an optimiser step does
    with pytest.raises(RuntimeError, match="changed after FGSM ran"):
        result.success  # noqa: B018
    assert torch.equal(kept.success, expected)  # measured before the change: kept


def test_deferred_results_concatenate_and_move(counted):
    model, x, y = counted
    attack = JSMA(model, theta=1.0, gamma=0.2, strict_targets=False)
    parts = [attack(x[i : i + 3], target=(y[i : i + 3] + 1) % 10) for i in (0, 3)]
    whole = attack(x, target=(y + 1) % 10)
    joined = type(whole).concat(parts).to("cpu")
    assert torch.equal(joined.x_adv, whole.x_adv)
    assert torch.equal(joined.success, whole.success)
    assert torch.equal(joined.pred_after, whole.pred_after)
    assert len(joined) == 6 and "6 samples" in repr(joined)


def test_resolve_device():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device("cpu") == "cpu" and resolve_device("cuda:1") == "cuda:1"
    assert describe_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="device must be auto .* got 'gpu'"):
        resolve_device("gpu")


def test_cli_device_defaults_to_auto_and_is_printed(tmp_path, capsys):
    assert main(["attack", "fgsm", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f"device: {describe_device(resolve_device('auto'))}"
    assert main(["train", "--device", "gpu", "--out", str(tmp_path / "n")]) == 2
    assert "--device must be cpu, cuda, cuda:N, mps or auto, got 'gpu'" in capsys.readouterr().err


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_attacks_move_like_float32(counted, precision):
    model, x, y = counted
    full = FGSM(model, eps=0.1)(x, y=y)
    half = FGSM(model, eps=0.1, precision=precision)(x, y=y)
    assert half.x_adv.dtype == x.dtype and float(half.linf.max()) <= 0.1 + 1e-6
    assert (half.x_adv == full.x_adv).float().mean() > 0.8  # the same signs but where the gradient is small
    pgd = PGD(model, eps=0.1, steps=3, precision=precision)(x, y=y)
    assert float(pgd.linf.max()) <= 0.1 + 1e-6 and model.calls == 2 + 1 + 3  # two FGSM calls, then a clean pass and three steps
    with pytest.raises(ValueError, match="precision must be one of"):
        BIM(model, precision="int8")


def test_measure_now_keeps_the_length_when_inputs_are_dropped(counted):
    model, x, y = counted
    result = FGSM(model, eps=0.1)(x, y=y).measure()
    calls = model.calls
    result.x_adv = result.x_adv[:2].clone()  # a streaming caller keeps a few adversarial inputs only
    assert len(result) == 6 and result.success.shape == (6,) and model.calls == calls


def test_distortions_are_measured_once_when_first_read(counted):
    from salmap.metrics import distortion

    model, x, y = counted
    result = PGD(model, eps=0.1, steps=2)(x, y=y)
    want = distortion(x, result.x_adv)
    for got, expected in zip((result.l0, result.l2, result.linf), want, strict=True):
        assert torch.equal(got, expected)
    assert result.l0 is result.l0  # computed once
    summary = result.summary()
    assert summary["linf"] == pytest.approx(float(want[2].mean()))


def test_changing_x_adv_in_place_before_reading_is_an_error(counted):
    model, x, y = counted
    result = FGSM(model, eps=0.1)(x, y=y)
    result.x_adv.add_(0.0)
    with pytest.raises(RuntimeError, match="x_adv was changed in place"):
        result.l0  # noqa: B018
    with pytest.raises(RuntimeError, match="x_adv was changed in place after FGSM ran"):
        result.success  # noqa: B018
    kept = FGSM(model, eps=0.1)(x, y=y).measure()  # measured first: a copy may then be changed
    l0, success = kept.l0.clone(), kept.success.clone()
    kept.x_adv.add_(0.0)
    assert torch.equal(kept.l0, l0) and torch.equal(kept.success, success)


def test_frozen_puts_back_what_the_block_changed():
    from salmap.gradients import frozen

    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(), nn.Linear(3, 2))
    model[0].eval()
    model[2].weight.requires_grad_(False)
    before = ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()])
    with frozen(model):
        assert not any(m.training for m in model.modules())
        assert not any(p.requires_grad for p in model.parameters())
        model.train()  # something inside changes the flags again
        for p in model.parameters():
            p.requires_grad_(True)
    assert ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]) == before


def test_the_modules_walk_is_model_modules_and_the_version_check_takes_inference_buffers():
    from salmap.attacks.base import _state_version
    from salmap.frozen import modules_of

    shared = nn.Linear(2, 2)
    model = nn.Sequential(shared, nn.ReLU(), nn.Sequential(nn.Linear(2, 2), shared), nn.Identity())
    model.register_module("absent", None)
    scripted = torch.jit.script(nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.Linear(2, 1))))
    for m in (model, scripted):
        walked, expected = modules_of(m), list(m.modules())
        assert len(walked) == len(expected) and all(a is b for a, b in zip(walked, expected, strict=True))
    with torch.inference_mode():
        frozen_stats = torch.zeros(2)
    model[2][0].register_buffer("stats", frozen_stats)  # no version counter: left out, no error
    before = _state_version(model)
    assert before is not None and len(before) == 4  # two Linear layers' weight and bias (one shared)
    with torch.no_grad():
        shared.weight.add_(1.0)
    assert _state_version(model) != before
