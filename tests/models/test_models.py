"""Model zoo and checkpoints: shapes, module names, round trips, untrusted files."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from salmap import models


def test_lenet_is_papernots_architecture():
    m = models.build("lenet")
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    linears = [mod for mod in m.modules() if isinstance(mod, nn.Linear)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64]
    assert [lin.out_features for lin in linears] == [200, 200, 10]
    assert m(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert models.build("lenet", in_channels=3, num_classes=4, input_size=(32, 32))(torch.rand(1, 3, 32, 32)).shape == (1, 4)


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_resnets(name):
    m = models.build(name, in_channels=1, num_classes=7, stem="small", width=8)
    names = dict(m.named_children())
    for key in ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"):
        assert key in names
    assert m(torch.rand(2, 1, 28, 28)).shape == (2, 7)
    big = models.build(name, num_classes=5, width=8)
    assert big(torch.rand(1, 3, 64, 64)).shape == (1, 5)
    blocks = sum(len(getattr(m, f"layer{i}")) for i in range(1, 5))
    assert blocks == (8 if name == "resnet18" else 16)


def test_unet_shapes():
    m = models.build("unet", in_channels=3, num_classes=1, base=4, depth=2)
    assert m(torch.rand(2, 3, 16, 16)).shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="divisible"):
        m(torch.rand(1, 3, 18, 18))


def test_unknown_model_name():
    with pytest.raises(ValueError, match="did you mean lenet"):
        models.build("lenett")
    with pytest.raises(ValueError, match="does not accept"):
        models.build("lenet", colour=True)



def test_loading_a_module_is_refused_in_one_line():
    # (was the module's whole multi-line repr, then "(not found)")
    with pytest.raises(ValueError, match=r"^model must be a checkpoint folder, model file or 'module:factory', "
                                         r"got Sequential$"):
        models.load(torch.nn.Sequential(torch.nn.Linear(2, 2)))

def test_checkpoint_round_trip(tmp_path):
    m = models.build("resnet18", in_channels=1, num_classes=3, stem="small", width=4).eval()
    x = torch.rand(2, 1, 28, 28)
    models.save(m, tmp_path / "ck", {"bounds": [0.0, 1.0], "class_names": ["a", "b", "c"]})
    assert (tmp_path / "ck" / "weights.safetensors").is_file()
    loaded, meta = models.load_with_meta(tmp_path / "ck")
    assert meta["class_names"] == ["a", "b", "c"] and meta["arch"]["name"] == "resnet18"
    assert meta["schema_version"] == 1  # like every JSON salmap writes
    assert torch.equal(m(x), loaded(x))
    assert not loaded.training


def test_torchscript_and_export_and_state_dict(tmp_path):
    m = models.build("lenet").eval()
    x = torch.rand(2, 1, 28, 28)
    torch.jit.save(torch.jit.script(m), str(tmp_path / "m.pt"))
    assert torch.allclose(models.load(tmp_path / "m.pt")(x), m(x))
    torch.export.save(torch.export.export(m, (x,)), str(tmp_path / "m.pt2"))
    with pytest.raises(ValueError, match="trust=True"):
        models.load(tmp_path / "m.pt2")
    assert torch.allclose(models.load(tmp_path / "m.pt2", trust=True)(x), m(x), atol=1e-6)
    torch.save(m.state_dict(), tmp_path / "sd.pth")
    assert torch.allclose(models.load(tmp_path / "sd.pth", arch="lenet")(x), m(x))


class _Exploit:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_malicious_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"weight": _Exploit()}))
    with pytest.raises(ValueError, match="could not be read safely"):
        models.load(path, arch="lenet")
    assert not (tmp_path / "PWNED").exists()
    torch.save({"w": _Exploit()}, tmp_path / "evil2.pt")
    with pytest.raises(ValueError):
        models.load(tmp_path / "evil2.pt")
    assert not (tmp_path / "PWNED").exists()


def test_factory_and_missing(tmp_path):
    with pytest.raises(ValueError, match="allow_code=True"):
        models.load("torch.nn:Identity")
    m = models.load("torch.nn:Identity", allow_code=True)
    assert isinstance(m, nn.Identity)
    with pytest.raises(ValueError, match="not found"):
        models.load(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        models.load(tmp_path / "bad")


def test_a_saved_defended_model_loads_in_a_fresh_process_without_importing_defenses_first(tmp_path):
    # models/ never imports defenses/: the defended models register through the provider that
    # salmap/__init__.py adds, which runs the first time the zoo is read.
    import subprocess
    import sys

    model = models.build("block-switch", base={"name": "lenet", "kwargs": {"num_classes": 3}}, channels=2)
    models.save(model, tmp_path / "b")
    code = (
        "import sys\n"
        "from salmap import models\n"
        "assert 'salmap.defenses' not in sys.modules\n"
        f"m = models.load({str(tmp_path / 'b')!r})\n"
        "print(type(m).__module__, type(m).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["salmap.defenses.switching", "BlockSwitch"]


def test_a_provider_runs_once_and_again_after_it_failed(monkeypatch):
    from salmap.models import registry

    monkeypatch.setattr(registry, "_PROVIDERS", [])
    calls = []

    def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("not yet")
        registry.register("provided-test-model")(lambda: nn.Linear(2, 2))

    models.add_provider(flaky)
    with pytest.raises(RuntimeError, match="not yet"):
        models.available()
    assert "provided-test-model" in models.available()
    assert "provided-test-model" in models.available() and len(calls) == 2
    monkeypatch.delitem(registry._FACTORIES, "provided-test-model")
    with pytest.raises(ValueError, match="provider must be a callable"):
        models.add_provider("salmap.defenses")  # type: ignore[arg-type]


def test_state_dict_without_arch_says_what_the_command_line_takes(tmp_path, capsys):
    from salmap.cli import main

    torch.save(models.build("lenet").state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ValueError, match=r"pass arch=<zoo name> .* to salmap\.models\.load"):
        models.load(tmp_path / "sd.pt")
    assert main(["attack", "fgsm", "--model", str(tmp_path / "sd.pt"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "checkpoint folder (salmap.models.save), a TorchScript file or module:factory" in err


def test_model_arguments_for_a_file_that_fixes_the_architecture_are_refused(tmp_path, capsys):
    from salmap.cli import main

    models.save(models.build("lenet"), tmp_path / "ckpt", {"bounds": [0.0, 1.0]})
    torch.jit.save(torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(784, 10))), str(tmp_path / "ts.pt"))
    for source in (tmp_path / "ckpt", tmp_path / "ts.pt"):
        with pytest.raises(ValueError, match=r"model arguments \{'depth': 34\} \(--model-arg\) apply to a module:factory"):
            models.load(source, depth=34)  # were silently ignored
    assert main(["attack", "fgsm", "--model", str(tmp_path / "ckpt"), "--model-arg", "depth=34",
                 "--out", str(tmp_path / "o")]) == 2
    assert "not to checkpoint folder" in capsys.readouterr().err and not (tmp_path / "o").exists()
    torch.save(models.build("lenet").state_dict(), tmp_path / "sd.pt")
    assert models.load(tmp_path / "sd.pt", arch="lenet", num_classes=10) is not None  # a state dict takes them


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_saved_weights_and_unit_tensors_get_the_umask_s_permissions(tmp_path, umask):
    """safetensors' save_file wrote every weights file 0600, whatever the umask: a checkpoint saved for a
    team could not be read by it. Now files are created as any other (0644 under umask 022)."""
    import os
    import stat

    from salmap.evaluation.files import load_tensors, save_tensors

    old = os.umask(umask)
    try:
        folder = models.save(models.build("lenet"), tmp_path / "m")
        save_tensors(tmp_path / "t.safetensors", {"a": torch.arange(3.0)})
    finally:
        os.umask(old)
    for path in (folder / "weights.safetensors", folder / "model.json", tmp_path / "t.safetensors"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name
    assert torch.equal(load_tensors(tmp_path / "t.safetensors")["a"], torch.arange(3.0))
    assert type(models.load(folder)).__name__ == "LeNet"
