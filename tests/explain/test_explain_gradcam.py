"""Grad-CAM against the formula by hand; hooks, modes, inputs, segmenters, bad layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from salmap import models
from salmap.explain import GradCAM


class GapNet(nn.Module):
    """conv -> relu -> global average pool -> linear: dS_t/dA_kij = W[t, k] / (h * w)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class FlatNet(nn.Module):
    """conv -> tanh -> flatten -> linear: dS_t/dA = W[t] reshaped, not constant over space."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2), nn.Tanh())
        self.head = nn.Linear(3 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1))


def test_formula_by_hand_on_global_average_pooling():
    torch.manual_seed(0)
    model = GapNet().double().eval()
    x = torch.randn(3, 2, 9, 9, dtype=torch.float64)
    classes = torch.tensor([0, 3, 2])
    cam = GradCAM(model, layer="features").attribute(x, target=classes)
    act = model.features(x)  # (3, 3, 7, 7)
    weights = model.fc.weight[classes] / (7 * 7)  # mean over space of dS/dA = W[t,k]/(hw)
    raw = (weights[:, :, None, None] * act).sum(dim=1, keepdim=True).clamp_min(0)
    want = F.interpolate(raw, size=(9, 9), mode="bilinear", align_corners=False)
    assert cam.shape == (3, 1, 9, 9)
    torch.testing.assert_close(cam, want, rtol=0, atol=1e-12)


def test_formula_with_spatially_varying_gradient_and_no_relu():
    torch.manual_seed(1)
    model = FlatNet().double().eval()
    x = torch.randn(2, 2, 9, 10, dtype=torch.float64)[..., :9]
    classes = torch.tensor([4, 1])
    cam = GradCAM(model, layer="body.1", relu=False).attribute(x, target=classes)
    act = model.body(x)  # (2, 3, 4, 4); S_t = W[t] . flatten(A) + b
    grad = model.head.weight[classes].view(2, 3, 4, 4)
    raw = (grad.mean(dim=(2, 3))[:, :, None, None] * act).sum(dim=1, keepdim=True)
    want = F.interpolate(raw, size=(9, 9), mode="bilinear", align_corners=False)
    torch.testing.assert_close(cam, want, rtol=0, atol=1e-12)
    assert (cam < 0).any()  # without the ReLU, negative evidence stays


def test_default_target_is_prediction_and_batched_equals_one_by_one():
    torch.manual_seed(2)
    model = models.build("resnet18", in_channels=1, num_classes=5, stem="small", width=4).eval()
    x = torch.rand(4, 1, 16, 16)
    cam = GradCAM(model, layer="layer3").attribute(x)
    pred = model(x).argmax(dim=1)
    torch.testing.assert_close(cam, GradCAM(model, layer="layer3").attribute(x, target=pred))
    for i in range(4):
        one = GradCAM(model, layer="layer3").attribute(x[i : i + 1])
        torch.testing.assert_close(one[0], cam[i], rtol=1e-4, atol=1e-6)


def test_segmenter_class_and_mask_matches_hand_gradient():
    torch.manual_seed(3)
    unet = models.build("unet", in_channels=1, num_classes=3, base=4, depth=2).double().eval()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[0, :4, :4] = True
    mask[1, 5:, 2:] = True
    classes = torch.tensor([1, 2])
    cam = GradCAM(unet, layer="merge.0").attribute(x, target=classes, mask=mask)

    store = {}
    handle = unet.merge[0].register_forward_hook(lambda m, i, o: store.update(a=o))
    out = unet(x)
    handle.remove()
    score = sum((out[b, classes[b]] * mask[b]).sum() for b in range(2))
    (grad,) = torch.autograd.grad(score, store["a"])
    raw = (grad.mean(dim=(2, 3), keepdim=True) * store["a"]).sum(dim=1, keepdim=True).clamp_min(0)
    want = F.interpolate(raw.detach(), size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(cam, want, rtol=0, atol=1e-12)


def test_hooks_removed_and_mode_restored_when_model_raises():
    class Exploding(GapNet):
        def forward(self, x):
            self.features(x)
            raise RuntimeError("boom")

    model = Exploding().train()
    # named with x's shape, as the attacks name a model that cannot be run on x; the model's own error chained
    with pytest.raises(ValueError, match=r"cannot be run on x of shape \(1, 2, 6, 6\): boom"):
        GradCAM(model, layer="features").attribute(torch.rand(1, 2, 6, 6), target=0)
    assert all(not m._forward_hooks for m in model.modules())
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_hooks_removed_model_and_input_unchanged_after_success():
    model = GapNet().train()
    x = torch.rand(2, 2, 6, 6)
    before = x.clone()
    GradCAM(model, layer="features.1").attribute(x, target=[1, 2])
    assert torch.equal(x, before) and not x.requires_grad and x.grad is None
    assert all(not m._forward_hooks for m in model.modules())
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())


def test_resnet34_layer4_shape():
    model = models.build("resnet34", num_classes=3, width=4).eval()
    cam = GradCAM(model, layer="layer4").attribute(torch.rand(2, 3, 64, 64))
    assert cam.shape == (2, 1, 64, 64) and (cam >= 0).all()


def test_unknown_layer_lists_close_names():
    model = models.build("resnet18", num_classes=3, width=4)
    with pytest.raises(ValueError, match=r"layer 'layr4' is not a module of ResNet; close names: layer4"):
        GradCAM(model, layer="layr4")
    with pytest.raises(ValueError, match="top-level modules: conv1"):
        GradCAM(model, layer="zzzzzz")



def test_layer_given_as_the_module_or_inside_data_parallel():
    # captum's LayerGradCam(model, model.layer4) / pytorch-grad-cam's target_layers=[...]; a DataParallel
    # model by its network's own names
    model = GapNet().eval()
    x = torch.rand(3, 2, 6, 6)
    by_name = GradCAM(model, layer="features").attribute(x)
    by_module = GradCAM(model, layer=model.features)
    assert by_module.layer == "features" and torch.equal(by_module.attribute(x), by_name)
    parallel = nn.DataParallel(model)
    assert GradCAM(parallel, layer=model.features).layer == "module.features"
    torch.testing.assert_close(GradCAM(parallel, layer="features").attribute(x), by_name, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"^layer must be a submodule of the model \(GapNet\) or its dotted name, "
                                         r"got a Conv2d that is not one of its modules$"):
        GradCAM(model, layer=nn.Conv2d(2, 3, 3))
    with pytest.raises(ValueError, match="got the model itself"):
        GradCAM(model, layer=model)

def test_bad_layers_and_models():
    with pytest.raises(ValueError, match="must output"):
        GradCAM(GapNet(), layer="fc").attribute(torch.rand(1, 2, 6, 6), target=0)
    with pytest.raises(ValueError, match="did not run"):
        model = GapNet()
        model.unused = nn.Conv2d(1, 1, 1)
        GradCAM(model, layer="unused").attribute(torch.rand(1, 2, 6, 6), target=0)
    with pytest.raises(ValueError, match="torch.nn.Module"):
        GradCAM(lambda x: x, layer="layer4")


def test_normalised_torchscript_model_is_refused_by_name(tmp_path, capsys):
    """Normalized(torch.jit.load(...)) (``--mean/--std`` or a run file's normalization on a TorchScript
    file): the TorchScript error, found by the run file's validation, not get_submodule's RuntimeError."""
    import yaml

    from salmap.cli import main
    from salmap.models import Normalized

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()
    torch.jit.save(torch.jit.script(net), str(tmp_path / "net.pt"))
    wrapped = Normalized(torch.jit.load(str(tmp_path / "net.pt")), [0.5] * 3, [0.2] * 3)
    for layer in (None, "0", "model.0"):
        with pytest.raises(ValueError, match="TorchScript modules do not support hooks") as info:
            GradCAM(wrapped, layer=layer)
        assert "pt2" not in str(info.value)  # a torch.export module fires no hooks either
    x = torch.rand(2, 3, 8, 8).numpy()
    import numpy as np

    np.savez(tmp_path / "d.npz", x=x, y=np.arange(2), x_test=x, y_test=np.arange(2))
    run = {"output": str(tmp_path / "o"), "data": {"name": f"npz:{tmp_path / 'd.npz'}", "num": 2},
           "models": [{"name": "ts", "path": str(tmp_path / "net.pt"),
                       "normalization": {"mean": [0.5] * 3, "std": [0.2] * 3}}],
           "attacks": [{"attack": "fgsm"}], "explanations": [{"explainer": "gradcam"}]}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    assert main(["evaluate", str(tmp_path / "run.yaml")]) == 2
    assert "explanations[0].explainer: gradcam needs forward hooks" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
