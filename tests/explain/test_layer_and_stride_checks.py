"""A Grad-CAM layer whose output has no usable form is refused before any work (the command line:
before its output folder is made), naming the layer, its output's shape and what was expected; an
occlusion stride larger than the image is accepted, as captum accepts it, with a one-line warning."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from conftest import error_line
from torch import nn

from salmap.cli import main
from salmap.explain import GradCAM, Occlusion

EXPECTED = ("must output (B, channels, *spatial) with the input's 2 spatial dimensions or transformer tokens "
            "(B, 1 + h*w, C), got (1, 16)")


class _Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, 3))
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        return self.net(x)


def test_check_layer_refuses_an_mlp_layer_on_one_sample_and_leaves_the_model_as_it_was():
    model = _Counting().train()
    cam = GradCAM(model, layer="net.1")
    x = torch.rand(5, 1, 6, 6)
    with pytest.raises(ValueError) as err:
        cam.check_layer(x)
    assert str(err.value) == f"layer 'net.1' {EXPECTED}; pass reshape= to convert it"
    assert model.batches == [1] and model.training and all(p.requires_grad for p in model.parameters())
    assert not model.net[1]._forward_hooks  # the hook is gone
    with pytest.raises(ValueError) as err:  # as a front end names it (it has no reshape)
        cam.check_layer(x, "--layer")
    assert str(err.value) == f"--layer 'net.1' {EXPECTED}"
    with pytest.raises(ValueError, match=re.escape(f"layer 'net.1' {EXPECTED}".replace("(1, 16)", "(5, 16)"))):
        cam.attribute(x)  # what attribute finds after its forward pass


def test_check_layer_accepts_what_attribute_accepts():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(72, 3)).eval()
    cam = GradCAM(model, layer="1")
    x = torch.rand(3, 1, 6, 6)
    cam.check_layer(x)
    cam.check_layer(x, "--layer")
    GradCAM(model, layer="1", reshape=lambda a: a).check_layer(x)
    with pytest.raises(ValueError, match="--layer '3' must output"):  # (B, 3) logits
        GradCAM(model, layer="3", reshape=None).check_layer(x, "--layer")
    with pytest.raises(ValueError, match=r"x must be \(B, C, \*spatial\) for Grad-CAM, got shape \(3, 36\)"):
        cam.check_layer(x.flatten(1))


@pytest.mark.parametrize("flag", ["--layer", "--gradcam-layer"])
def test_cli_explain_refuses_the_layer_before_any_work(tmp_path, lenet28, capsys, flag):
    out = tmp_path / "o"
    argv = ["explain", "--model", lenet28, "-n", "2", "--method", "gradient,gradcam", flag, "classifier.1",
            "--out", str(out)]
    assert main(argv) == 2
    err = error_line(capsys, "explain")
    assert err.endswith(f"error: {flag} 'classifier.1' must output (B, channels, *spatial) with the input's 2 "
                        "spatial dimensions or transformer tokens (B, 1 + h*w, C), got (1, 200)\n"), err
    assert not out.exists()


def test_cli_explain_refuses_an_mlp_layer_given_by_number(tmp_path, capsys, monkeypatch):
    (tmp_path / "trust4_mlp_factory.py").write_text(
        "from torch import nn\n\ndef build():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "o"
    assert main(["explain", "--model", "trust4_mlp_factory:build", "--allow-code", "-n", "2", "--method", "gradcam",
                 "--layer", "1", "--out", str(out)]) == 2
    err = error_line(capsys, "explain")
    assert "error: --layer '1' must output (B, channels, *spatial)" in err and err.endswith("got (1, 32)\n"), err
    assert not out.exists()


def test_evaluate_refuses_the_layer_at_validation(tmp_path, lenet28, capsys):
    out = tmp_path / "o"
    (tmp_path / "run.yaml").write_text(
        f"output: {out}\ndata: {{name: mnist-sample, num: 2}}\nmodels: [{{path: {lenet28}}}]\n"
        "attacks: [{attack: fgsm}]\nexplanations: [{explainer: gradcam, params: {layer: classifier.1}}]\n")
    assert main(["evaluate", str(tmp_path / "run.yaml")]) == 2
    err = error_line(capsys, "evaluate")
    assert ("explanations[0].params.layer: layer 'classifier.1' must output (B, channels, *spatial) with the input's "
            "2 spatial dimensions or transformer tokens (B, 1 + h*w, C), got (1, 200) in models[0] (lenet)") in err, err
    assert not out.exists()


def test_a_stride_larger_than_the_image_warns_and_gives_the_maps_of_the_largest_stride_that_counts():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    x = torch.rand(2, 1, 8, 8)
    with pytest.warns(UserWarning, match=r"occlusion's stride 20 is larger than the input \(8x8\): the patch is placed "
                                         r"only at the start and flush with the end of those dimensions, as with any "
                                         r"stride of at least 6 \(expected a stride no larger than the input\)"):
        wide = Occlusion(model, patch=2, stride=20).attribute(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = Occlusion(model, patch=2, stride=6).attribute(x)  # no warning up to the input's size
        Occlusion(model, patch=(8, 2), stride=(20, 2)).attribute(x)  # the patch fills that dimension: no effect
    assert torch.equal(wide, same)
    with pytest.warns(UserWarning, match=r"stride \(2, 9\) is larger than the input \(8x8\).* of that dimension, as "
                                         r"with any stride of at least 5 "):
        Occlusion(model, patch=(2, 3), stride=(2, 9)).attribute(x)


def test_cli_notes_a_wide_stride_in_one_line(tmp_path, lenet28, capsys):
    argv = ["explain", "--model", lenet28, "-n", "2", "--method", "occlusion", "--patch", "4", "--stride", "50"]
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main([*argv, "--out", str(tmp_path / "o")]) == 0
        err = capsys.readouterr().err
        assert err.startswith("salmap explain: warning: occlusion's stride 50 is larger than the input (28x28)"), err
        assert err.count("\n") == 1 and "warnings.warn" not in err
        assert main([*argv, "--quiet", "--out", str(tmp_path / "q")]) == 0
        assert capsys.readouterr().err == ""


def test_the_stride_warning_points_at_the_caller_of_attribute():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Occlusion(model, patch=2, stride=20).attribute(torch.rand(1, 1, 8, 8))
    assert [w.filename for w in caught if "stride" in str(w.message)] == [__file__]
