"""``salmap defend`` on someone's own model (a TorchScript file, a module:factory): the accuracy measured
where the file records none, the defended model saved as a TorchScript checkpoint folder that every
command loads without running code, and a rerun reusing the defense."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import _own_defend as shared
import pytest
import torch
from _own_defend import MEAN, STD, body, dae_args, digest
from conftest import error_line
from safetensors.torch import load_file, save_file
from torch import nn

from salmap import data, models
from salmap.cli import main
from salmap.defenses import DenoisingAutoencoder, Purified, saving
from salmap.defenses.saving import restore
from salmap.models import Normalized

own = shared.own  # (a fixture)


def test_dae_on_a_torchscript_model_is_saved_as_torchscript_loaded_by_attack_and_resumed(
        own: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    source, out = own / "pixels.pt", tmp_path / "d"
    before = digest(source)
    assert main(dae_args(str(source), out)) == 0
    printed = capsys.readouterr().out
    assert "measured on the digits test split" in printed and "traced" not in printed
    assert (out / "model.ts").is_file() and not (out / "weights.safetensors").exists()
    assert digest(source) == before
    meta = json.loads((out / "model.json").read_text())
    assert meta["format"] == "torchscript" and "arch" not in meta and meta["input_shape"] == [1, 8, 8]
    assert meta["defense"]["kind"] == "dae" and meta["defense"]["denoiser"]["name"] == "dae"
    assert meta["metrics"]["test_accuracy"] > 0.5

    # the folder loads without unpickling anything; it computes the eager Purified of the user's model
    def no_pickle(*args, **kwargs):
        raise AssertionError("the defended folder was unpickled")

    monkeypatch.setattr(torch, "load", no_pickle)
    loaded = models.load(out)
    monkeypatch.undo()
    dae = DenoisingAutoencoder(1, 8)
    dae.load_state_dict({k.removeprefix("denoiser."): v for k, v in loaded.state_dict().items()
                         if k.startswith("denoiser.")})
    eager = Purified(torch.jit.load(str(source)), dae.eval()).eval()
    x = data.load_dataset("digits", "test").x
    with torch.no_grad():
        expected = eager(x)
        torch.testing.assert_close(loaded(x), expected, rtol=1e-5, atol=1e-5)
    assert restore(out, torch.jit.load(str(source))).denoiser.state_dict().keys() == dae.state_dict().keys()

    # salmap attack takes the folder as the model; its clean predictions are the eager defense's
    assert main(["attack", "fgsm", "--model", str(out), "--data", "digits", "-n", "10", "--eps", "0.1",
                 "--out", str(tmp_path / "a")]) == 0
    samples = json.loads((tmp_path / "a" / "results.json").read_text())["samples"]
    assert [s["pred_before"] for s in samples] == expected[:10].argmax(1).tolist()

    # a rerun reuses the trained defense and the finished evaluation
    first = json.loads((out / "evaluation.json").read_text())

    def no_training(*args, **kwargs):
        raise AssertionError("the defense was trained again")

    monkeypatch.setattr("salmap.cli.defend.train_denoiser", no_training)
    capsys.readouterr()
    assert main(dae_args(str(source), out)) == 0
    assert "reusing the defended checkpoint" in capsys.readouterr().out
    again = json.loads((out / "evaluation.json").read_text())
    assert again["clean_accuracy"] == first["clean_accuracy"] and again["adaptive"] == first["adaptive"]
    assert again["attack_model"] == first["attack_model"] == "Purified"


def test_dae_on_a_factory_with_normalisation_flags_is_traced_and_checked(
        own: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.syspath_prepend(str(own))
    out, weights = tmp_path / "d", tmp_path / "net.safetensors"
    weights.write_bytes((own / "net.safetensors").read_bytes())
    flags = ["--allow-code", "--model-arg", f"weights={weights}", "--mean", str(MEAN), "--std", str(STD)]
    converted: list[str] = []
    convert = saving.to_torchscript

    def counted(model: nn.Module, *args: object, **kwargs: object) -> tuple[torch.jit.ScriptModule, str]:
        converted.append(type(model).__name__)
        return convert(model, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(saving, "to_torchscript", counted)
    assert main(dae_args("own_defend_net:net", out, *flags)) == 0
    printed = capsys.readouterr().out
    assert "saved traced, checked on 256 test images" in printed
    # the user's model became TorchScript once (before training), reused when the defense was saved
    assert converted == ["Normalized", "Purified"]
    # a rerun saves nothing, so it says nothing about saving
    assert main(dae_args("own_defend_net:net", out, *flags)) == 0
    printed = capsys.readouterr().out
    assert "reusing the defended checkpoint" in printed and "traced" not in printed
    # the user retrains the model the factory loads: the defense of the old model is not reused
    saved = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    state = load_file(str(weights))
    state["4.bias"][0] += 1e-3
    save_file(state, str(weights))
    assert main(dae_args("own_defend_net:net", out, *flags)) == 2
    err = error_line(capsys, "defend")
    assert "holds a different run" in err and "the weights of the model models[0] (own_defend_net:net) builds" in err
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == saved
    meta = json.loads((out / "model.json").read_text())
    assert "normalization" not in meta  # it is inside the saved computation, not applied again on load
    assert meta["defense"]["normalization_inside"] == {"mean": [MEAN], "std": [STD]}
    sys.modules.pop("own_defend_net", None)
    monkeypatch.undo()
    # another command loads it without --allow-code; it agrees with the TorchScript file's defense
    loaded = models.load(out)
    eager = restore(out, torch.jit.load(str(own / "pixels.pt")))
    x = data.load_dataset("digits", "test").x
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), eager(x), rtol=1e-4, atol=1e-4)


def test_adv_train_fine_tunes_a_copy_of_a_torchscript_model(own: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    source, out = own / "pixels.pt", tmp_path / "adv"
    before = digest(source)
    common = ["defend", "adv-train", "--model", str(source), "--data", "digits", "--out", str(out), "--epochs", "1",
              "--lr", "0.005", "--eps", "0.1", "-n", "10", "--attacks", "fgsm-0.1", "--device", "cpu"]
    assert main(common) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--model {source}" in err and "--fine-tune" in err
    assert not out.exists()
    assert main([*common, "--fine-tune"]) == 0
    assert digest(source) == before
    meta = json.loads((out / "model.json").read_text())
    assert meta["format"] == "torchscript" and meta["defense"]["fine_tune"] is True
    report = json.loads((out / "evaluation.json").read_text())
    assert report["settings"]["fine_tune"] is True and report["clean_accuracy"] > 0.5
    tuned = models.load(out)
    original = torch.jit.load(str(source))
    assert tuned.state_dict().keys() == original.state_dict().keys()
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), original.state_dict().values(),
                                                     strict=True))


def test_a_torch_export_archive_gets_dae_with_trust_and_no_fine_tuning(own: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    pixels = torch.jit.load(str(own / "pixels.pt"))
    x = data.load_dataset("digits", "test").x
    core = body()
    core.load_state_dict(load_file(str(own / "net.safetensors")))
    program = torch.export.export(Normalized(core, [MEAN], [STD]).eval(), (x[:2],),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(tmp_path / "m.pt2"))
    out = tmp_path / "d"
    assert main([*dae_args(str(tmp_path / "m.pt2"), out), "--trust-model"]) == 0
    assert "saved traced" in capsys.readouterr().out
    with torch.no_grad():  # loaded without --trust-model: a TorchScript folder
        torch.testing.assert_close(models.load(out)(x), restore(out, pixels)(x), rtol=1e-4, atol=1e-4)
    rc = main(["defend", "adv-train", "--fine-tune", "--trust-model", "--model", str(tmp_path / "m.pt2"),
               "--data", "digits", "--out", str(tmp_path / "adv")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "is a torch.export model" in err and "dae" in err


def test_a_zoo_checkpoint_behind_mean_std_flags(own: Path, tmp_path: Path) -> None:
    """dae: Purified(Normalized(net), denoiser) has no zoo architecture, so it is saved as TorchScript;
    adv-train --fine-tune: the tuned network is a zoo model, saved as a checkpoint with its normalisation."""
    norm = ["--mean", str(MEAN), "--std", str(STD)]
    assert main(dae_args(str(own / "zoo"), tmp_path / "d", *norm)) == 0
    assert json.loads((tmp_path / "d" / "model.json").read_text())["format"] == "torchscript"
    x = data.load_dataset("digits", "test").x
    with torch.no_grad():
        torch.testing.assert_close(models.load(tmp_path / "d")(x), restore(tmp_path / "d", models.load(
            own / "zoo", normalization=(MEAN, STD)))(x), rtol=1e-4, atol=1e-4)
    assert main(["defend", "adv-train", "--fine-tune", "--model", str(own / "zoo"), "--data", "digits", "--out",
                 str(tmp_path / "a"), "--epochs", "1", "--eps", "0.1", "-n", "10", "--attacks", "fgsm-0.1", *norm]) == 0
    meta = json.loads((tmp_path / "a" / "model.json").read_text())
    assert meta["arch"]["name"] == "own-defend-test-cnn" and meta["normalization"]["mean"] == [MEAN]
    assert (tmp_path / "a" / "weights.safetensors").is_file() and not (tmp_path / "a" / "model.ts").exists()
