"""LRP (and ISI's relevance indicator) on a TorchScript model: one clear error naming TorchScript
and what to use instead, raised before a command or run file does any work."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from salmap.cli import main
from salmap.explain import LRP, GradCAM


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("ts")
    torch.jit.save(torch.jit.script(Small().eval()), str(root / "small.pt"))
    x = np.random.default_rng(0).random((4, 1, 8, 8)).astype(np.float32)
    np.savez(root / "d.npz", x=x, y=np.arange(4) % 3, x_test=x, y_test=np.arange(4) % 3)
    return root


def _one_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"salmap {command}: error: ") and "Traceback" not in err, err
    return err


def test_lrp_refuses_torchscript_by_name(files):
    scripted = torch.jit.load(str(files / "small.pt"))
    with pytest.raises(ValueError, match="TorchScript modules .* do not support hooks.*gradient or occlusion"):
        LRP(scripted)
    with pytest.raises(ValueError, match="or use gradient or occlusion on this one") as info:
        GradCAM(scripted, layer="conv")
    assert "LRP" not in str(info.value)  # LRP needs hooks too: not offered instead


def test_cli_isi_relevance_on_torchscript_fails_before_work(files, tmp_path, capsys):
    out = tmp_path / "isi"
    rc = main(["attack", "isi", "--model", str(files / "small.pt"), "--data", f"npz:{files / 'd.npz'}", "-n", "2",
               "--out", str(out)])
    assert rc == 2
    err = _one_line(capsys, "attack")
    assert "TorchScript" in err and "run it with --indicator sensitivity on this model" in err  # a flag it has
    assert not out.exists()


def test_cli_explain_attack_isi_on_torchscript_says_which_command_can(files, tmp_path, capsys):
    """``salmap explain --attack isi`` takes only ``--eps`` for the attack, so the error does not offer
    ISI's ``indicator='sensitivity'`` (no flag of explain sets it) but the commands that can, and
    ``--method lrp`` offers explain's own ``--method gradient or occlusion``; before any work."""
    out = tmp_path / "explain"
    base = ["explain", "--model", str(files / "small.pt"), "--data", f"npz:{files / 'd.npz'}", "-n", "2",
            "--out", str(out)]
    assert main([*base, "--attack", "isi"]) == 2
    err = _one_line(capsys, "explain")
    assert "--attack isi cannot run on --model" in err and "TorchScript" in err
    assert "salmap attack isi --indicator sensitivity or salmap evaluate --attack isi:indicator=sensitivity" in err
    assert "indicator='sensitivity'" not in err
    assert main([*base, "--method", "lrp"]) == 2
    err = _one_line(capsys, "explain")
    assert "--method lrp cannot run on --model" in err and "--method gradient or occlusion on this one" in err
    assert "ISI" not in err
    assert not out.exists()


def test_run_file_lrp_on_torchscript_fails_at_validation(files, tmp_path, capsys):
    out = tmp_path / "eval"
    run = {"output": str(out), "data": {"name": f"npz:{files / 'd.npz'}", "num": 2},
           "models": [{"name": "ts", "path": str(files / "small.pt")}],
           "attacks": [{"attack": "fgsm"}, {"attack": "isi"}], "explanations": [{"explainer": "lrp"}]}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    assert main(["evaluate", str(tmp_path / "run.yaml")]) == 2
    err = _one_line(capsys, "evaluate")
    assert "attacks[1].attack: isi cannot run on models[0] (ts)" in err
    assert "or set attacks[1].params.indicator to sensitivity (--attack isi:indicator=sensitivity)" in err
    assert "explanations[0].explainer: lrp cannot run on models[0] (ts)" in err and "TorchScript" in err
    assert not out.exists()  # the fgsm before them did not run either


def test_torch_export_module_is_refused_by_name_for_hooks(files, tmp_path, capsys):
    """A .pt2 module runs its graph without calling its layers: LRP, ISI's relevance and Grad-CAM (even
    without --layer) say so, and a run file's validation finds it before any work."""
    x = torch.rand(2, 1, 8, 8)
    exported = torch.export.export(Small().eval(), (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(exported, str(tmp_path / "m.pt2"))
    module = exported.module()
    with pytest.raises(ValueError, match=r"torch.export \(.pt2\) module runs its graph .* no hook fires"):
        LRP(module)
    with pytest.raises(ValueError, match=r"on a layer, and a torch.export \(.pt2\) module"):
        GradCAM(module)  # not "layer is needed: GraphModule has no layer4 and no convolution"
    run = {"output": str(tmp_path / "eval"), "data": {"name": f"npz:{files / 'd.npz'}", "num": 2},
           "models": [{"name": "ex", "path": str(tmp_path / "m.pt2")}],
           "attacks": [{"attack": "isi"}], "explanations": [{"explainer": "gradcam"}]}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    assert main(["--trust-model", "evaluate", str(tmp_path / "run.yaml")]) == 2
    err = _one_line(capsys, "evaluate")
    assert "attacks[0].attack: isi cannot run on models[0] (ex)" in err and "no hook fires" in err
    assert "explanations[0].explainer: gradcam needs forward hooks" in err and "torch.export module" in err
    assert not (tmp_path / "eval").exists()


def test_cli_explain_attack_isi_on_torchscript_fails_before_work(files, tmp_path, capsys):
    out = tmp_path / "explain"
    rc = main(["explain", "--model", str(files / "small.pt"), "--data", f"npz:{files / 'd.npz'}", "-n", "2",
               "--attack", "isi", "--out", str(out)])
    assert rc == 2 and "TorchScript" in _one_line(capsys, "explain")
    assert not out.exists()
