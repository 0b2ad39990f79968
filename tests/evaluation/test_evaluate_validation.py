"""Run-file validation runs no user code: parameters checked against the registry, model code only
with --allow-code (never during validation), files opened once and handed to the plan."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _evaluate_support import PYTHON, save_lenet, subprocess_env, write_run
from torch import nn

from salmap import models
from salmap.evaluation import resources
from salmap.evaluation.checker import Checker
from salmap.evaluation.config import ConfigError, load_config, parse_config
from salmap.evaluation.resources import LoadedModel, open_resources


@pytest.fixture(scope="module")
def lenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_lenet(tmp_path_factory.mktemp("model") / "lenet")


def run(lenet: Path, out: Path, **changes) -> dict:
    return {
        "output": str(out), "batch_size": 4, "data": {"name": "mnist-sample", "num": 4},
        "models": [{"name": "lenet", "path": str(lenet)}], "attacks": [{"attack": "fgsm"}], **changes,
    }


@pytest.mark.parametrize(
    "changes",
    [
        {"attacks": [{"attack": "isi"}]},
        {"attacks": [{"attack": "isi", "params": {"indicator": "relevance", "norm": "l2"}}]},
        {"explanations": [{"explainer": "lrp"}]},
        {"explanations": [{"explainer": "gradcam", "params": {"layer": "features.3"}}]},
        {"explanations": [{"explainer": "gradcam"}]},  # the last convolution by default
        {"explanations": [{"explainer": "occlusion", "params": {"patch": 4, "fill": 0.5}}]},
        {"attacks": [{"attack": "jsma", "targets": "all", "params": {"theta": 1.0, "gamma": 0.145}},
                     {"attack": "pgd", "targets": "next", "params": {"steps": 2}}]},
    ],
)
def test_components_that_need_the_real_model_are_accepted(tmp_path, lenet, changes):
    cfg = parse_config(run(lenet, tmp_path / "out", **changes))
    assert cfg.resources is not None and cfg.resources.models[0].task == "classification"


def test_readme_run_file_validates_as_written(tmp_path, lenet):
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = text.split("```yaml\noutput: runs/eval", 1)[1].split("```", 1)[0]
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "lenet").symlink_to(lenet)
    (tmp_path / "runs" / "denoised").symlink_to(lenet)
    path = tmp_path / "run.yaml"
    path.write_text("output: runs/eval" + block)
    cfg = load_config(path)
    assert [a.attack for a in cfg.attacks] == ["fgsm", "jsma", "isi"]
    assert [e.explainer for e in cfg.explanations] == ["gradient", "occlusion"]


def test_gradcam_layer_must_exist_in_the_model(tmp_path, lenet):
    with pytest.raises(ConfigError) as info:
        parse_config(run(lenet, tmp_path / "out", explanations=[{"explainer": "gradcam",
                                                                  "params": {"layer": "featurs.3"}}]))
    (path, message), = info.value.problems
    assert path == "explanations[0].params.layer"
    assert message.startswith("'featurs.3' is not a module name (close names: features.3")
    assert message.endswith("in models[0] (lenet)")


def test_tasks_of_attacks_models_and_data_must_match(tmp_path, lenet):
    unet = models.save(models.build("unet", in_channels=1, num_classes=2, base=4), tmp_path / "unet",
                       {"bounds": [0.0, 1.0]})
    with pytest.raises(ConfigError) as info:
        parse_config(run(unet, tmp_path / "out", data={"name": "mnist-seg", "num": 2},
                         attacks=[{"attack": "jsma"}, {"attack": "jsma-seg"}]))
    assert info.value.problems == [
        ("attacks[0].attack", "jsma attacks classification models but mnist-seg is a segmentation dataset")]
    with pytest.raises(ConfigError) as info:
        parse_config(run(lenet, tmp_path / "out", data={"name": "mnist-seg", "num": 2},
                         attacks=[{"attack": "jsma-seg"}]))
    (path, message), = info.value.problems
    assert path == "models[0].path" and "does not take the data's samples of shape (1, 64, 64)" in message


def test_a_module_is_needed_where_declared():
    check = Checker()
    stand_in = LoadedModel("f", lambda x: x, {}, (0.0, 1.0), "classification")  # type: ignore[arg-type]
    from salmap import registry
    from salmap.evaluation.settings import ModelConfig

    cfgs = [ModelConfig("f", "f")]
    resources._check_pairing(check, "explanations[0]", registry.get_explainer("lrp"), {}, cfgs, [stand_in], None, "d")
    resources._check_pairing(check, "attacks[0]", registry.get_attack("isi"), {"indicator": "sensitivity"}, cfgs,
                             [stand_in], None, "d")
    resources._check_pairing(check, "attacks[1]", registry.get_attack("isi"), {}, cfgs, [stand_in], None, "d")
    assert check.problems == [
        ("explanations[0].explainer", "lrp needs a torch.nn.Module model, models[0] (f) is function"),
        ("attacks[1].attack", "isi needs a torch.nn.Module model, models[0] (f) is function"),
    ]


def test_torchscript_is_a_module(tmp_path, lenet):
    scripted = torch.jit.script(models.load(lenet))
    path = tmp_path / "lenet.pt"
    torch.jit.save(scripted, str(path))
    cfg = parse_config(run(path, tmp_path / "out", explanations=[{"explainer": "gradient"}],
                           attacks=[{"attack": "isi", "params": {"indicator": "sensitivity"}}]))
    assert isinstance(cfg.resources.models[0].module, nn.Module)
    assert cfg.resources.models[0].task == "classification"
    with pytest.raises(ConfigError) as info:  # Grad-CAM hooks a layer: not possible in TorchScript
        parse_config(run(path, tmp_path / "out", explanations=[{"explainer": "gradcam"}]))
    assert info.value.problems == [("explanations[0].explainer", "gradcam needs forward hooks on the model's "
                                    "layers, which TorchScript models such as models[0] (lenet) do not support")]


def test_each_model_and_the_data_are_opened_once_and_handed_to_the_plan(tmp_path, lenet, monkeypatch):
    calls: list[str] = []
    real = models.load_with_meta

    def counting(source, *args, **kwargs):
        calls.append(str(source))
        return real(source, *args, **kwargs)

    monkeypatch.setattr(models, "load_with_meta", counting)
    other = save_lenet(tmp_path / "other", seed=1)
    cfg = parse_config(run(lenet, tmp_path / "out", models=[{"path": str(lenet)}, {"path": str(other)}],
                           explanations=[{"explainer": "gradcam"}]))
    res = open_resources(cfg)
    assert calls == [str(lenet), str(other)]
    assert res is cfg.resources and [m.path for m in res.models] == [str(lenet), str(other)]
    assert open_resources(cfg) is res and len(calls) == 2


# -- code named by a run file --------------------------------------------------------------
EVIL = """
import pathlib
pathlib.Path({marker!r}).write_text("imported")

def make():
    pathlib.Path({marker!r}).write_text("called")
    import torch
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
"""


@pytest.fixture()
def evil(tmp_path, monkeypatch):
    """A module ``evil_mod`` on sys.path (as the working directory is under ``python -m``)."""
    marker = tmp_path / "marker"
    (tmp_path / "evil_mod.py").write_text(EVIL.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield marker
    sys.modules.pop("evil_mod", None)


def test_a_run_file_naming_code_is_refused_without_allow_code(tmp_path, lenet, evil):
    for path in ("evil_mod:make", "os:abort"):
        with pytest.raises(ConfigError) as info:
            parse_config(run(lenet, tmp_path / "out", models=[{"path": path}]), base=tmp_path)
        assert info.value.problems == [("models[0].path", f"{path!r} names Python code (module:factory); it runs "
                                        "only when the command line allows it with --allow-code")]
    assert not evil.exists() and "evil_mod" not in sys.modules


def test_allowed_code_runs_at_the_plan_never_during_validation(tmp_path, lenet, evil):
    cfg = parse_config(run(lenet, tmp_path / "out", models=[{"path": "evil_mod:make"}]), base=tmp_path,
                       allow_code=True)
    assert not evil.exists() and "evil_mod" not in sys.modules
    assert cfg.resources is not None and cfg.resources.models == [None]
    assert "allow_code" not in cfg.to_dict()
    res = open_resources(cfg)
    assert evil.read_text() == "called" and res.models[0].task == "classification"


def test_cli_refuses_code_from_the_working_directory(tmp_path, lenet):
    marker = tmp_path / "marker"
    (tmp_path / "evil_mod.py").write_text(EVIL.format(marker=str(marker)))
    write_run(tmp_path / "run.yaml", **run(lenet, tmp_path / "out", models=[{"path": "evil_mod:make"}]))
    proc = subprocess.run([PYTHON, "-m", "salmap", "evaluate", "run.yaml"], cwd=tmp_path, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "models[0].path: 'evil_mod:make' names Python code" in proc.stderr and "--allow-code" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_targeting_modes_are_those_the_attack_declares_and_evaluate_runs(tmp_path, lenet):
    with pytest.raises(ConfigError) as info:
        parse_config(run(lenet, tmp_path / "out", attacks=[
            {"attack": "jsma", "targets": "hide"}, {"attack": "pgd", "targets": "add"}]))
    assert [p for p, _ in info.value.problems] == ["attacks[0].targets", "attacks[1].targets"]
    assert "must be one of none, random, next, least-likely, all, got 'hide'" in info.value.problems[0][1]
    cfg = parse_config(run(lenet, tmp_path / "out", attacks=[{"attack": "jsma"}, {"attack": "fgsm"}]))
    assert [a.targets for a in cfg.attacks] == ["random", "none"]


def test_lrp_and_isi_relevance_check_the_layers_at_validation():
    check = Checker()
    from salmap import registry
    from salmap.evaluation.settings import ModelConfig

    norm = LoadedModel("g", nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.LayerNorm(3)), {}, (0.0, 1.0), "classification")
    cfgs = [ModelConfig("g", "g")]
    resources._check_pairing(check, "explanations[0]", registry.get_explainer("lrp"), {}, cfgs, [norm], None, "d")
    resources._check_pairing(check, "attacks[0]", registry.get_attack("isi"), {}, cfgs, [norm], None, "d")
    resources._check_pairing(check, "attacks[1]", registry.get_attack("isi"), {"indicator": "sensitivity"}, cfgs,
                             [norm], None, "d")
    assert [p for p, _ in check.problems] == ["explanations[0].explainer", "attacks[0].attack"]
    assert check.problems[0][1].startswith("lrp cannot run on models[0] (g): LRP has no rule for layer '2' of type LayerNorm")


def test_labels_past_the_models_outputs_are_refused_at_validation(tmp_path, lenet):
    import numpy as np

    x = np.zeros((3, 28, 28), np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 12, 3]), x_test=x, y_test=np.array([0, 12, 3]))
    data = {"name": f"npz:{tmp_path / 'd.npz'}", "num": 3}
    with pytest.raises(ConfigError, match=r"models\[0\]\.path: npz:.* has labels up to 12 but the model has 10 outputs"):
        parse_config(run(lenet, tmp_path / "out", data=data))


def test_a_data_split_with_no_samples_is_refused_at_validation(tmp_path, lenet):
    import numpy as np

    x = np.zeros((3, 28, 28), np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 2]), x_test=x[:0], y_test=np.zeros(0, np.int64))
    data = {"name": f"npz:{tmp_path / 'd.npz'}", "num": 3}
    with pytest.raises(ConfigError, match=r"data\.name: dataset 'npz:.*' has no test images: split 'test' must hold"):
        parse_config(run(lenet, tmp_path / "out", data=data))
