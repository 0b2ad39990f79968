"""Defenses' bad input refused with clear errors, adversarial training's labels, and ``salmap defend``
end to end with the evaluation's targets and default attacks on every defended model."""

from __future__ import annotations

import copy
import json
import warnings

import _defense_fixtures as shared
import pytest
import torch
from _defense_fixtures import switch
from _tiny_defense import ARCH, TINY
from torch import nn

from salmap import models
from salmap.cli import main
from salmap.defenses import (
    EOT,
    BlockSwitch,
    Purified,
    adversarial_training,
    check_trained,
    default_attacks,
    evaluate_defense,
    train_block_switch,
)
from salmap.defenses.block_switch import block_switch
from salmap.defenses.evaluation import AttackSpec
from salmap.training import train_classifier

trained = shared.trained  # (a fixture)
dae = shared.dae  # (a fixture)
switched = shared.switched  # (a fixture)


# -- bad input ------------------------------------------------------------------------

def test_bad_input_raises_clear_errors(trained, digits) -> None:
    model, _ = trained
    with pytest.raises(ValueError, match="K >= 2.*K=1"):
        BlockSwitch([nn.Identity()], nn.Identity())
    with pytest.raises(ValueError, match="channels must be in"):
        block_switch(ARCH, channels=1)
    with pytest.raises(ValueError, match="channels must be in"):
        train_block_switch(ARCH, digits[0].x[:8], digits[0].y[:8], channels=0)
    shrinking = nn.Conv2d(1, 1, 3)
    with pytest.raises(ValueError, match=r"denoiser must return a tensor shaped like its input \(1, 1, 8, 8\), got \(1, 1, 6, 6\)"):
        Purified(model, shrinking, input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="denoiser must return"):
        Purified(model, shrinking)(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="no test accuracy"):
        check_trained({"arch": ARCH, "metrics": {}})
    with pytest.raises(ValueError, match="near chance"):
        check_trained({"arch": ARCH, "metrics": {"test_accuracy": 0.11}}, 10)
    assert check_trained({"metrics": {"test_accuracy": 0.95}}, 10) == 0.95
    torch.manual_seed(0)
    untrained = models.build(TINY, **ARCH["kwargs"])
    with pytest.raises(ValueError, match="undefended model accuracy .* near chance"):
        evaluate_defense(model, untrained, digits[1].x, digits[1].y, [], progress=False)
    with pytest.raises(ValueError, match="samples must be"):
        EOT(switch(2), samples=0)



def test_adversarial_training_takes_labels_as_a_list_and_refuses_others(digits) -> None:
    # a list or array of class indices is labels like a tensor (was "only integer tensors of a single
    # element can be converted to an index" from the batch indexing); a shape or dtype that is not, one line
    x, y = digits[0].x[:16], digits[0].y[:16]
    torch.manual_seed(0)
    model = models.build(TINY, **ARCH["kwargs"])
    state = copy.deepcopy(model.state_dict())
    by_list = adversarial_training(model, x, y.tolist(), epochs=1, progress=False)
    model.load_state_dict(state)
    by_tensor = adversarial_training(model, x, y, epochs=1, progress=False)
    assert by_list.train_loss == by_tensor.train_loss
    with pytest.raises(ValueError, match=r"^y must hold one class index per sample, shape \(16,\), got shape \(8,\)$"):
        adversarial_training(model, x, y[:8], epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"^y_test must be an integer tensor of class indices, got dtype torch.float32$"):
        train_classifier(model, x, y, x, y.float(), epochs=1, progress=False)

# -- command line ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, trained) -> str:
    model, accuracy = trained
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    models.save(model, folder, {"bounds": [0.0, 1.0], "input_shape": [1, 8, 8],
                                "class_names": [str(i) for i in range(10)],
                                "metrics": {"test_accuracy": accuracy}})
    return str(folder)


@pytest.mark.parametrize("kind, extra", [
    ("dae", ["--width", "16", "--adversarial", "fgsm"]),
    ("block-switch", ["--channels", "2"]),
    ("dae+block-switch", ["--channels", "2", "--width", "8", "--freeze-channels"]),
    ("adv-train", ["--mode", "goodfellow", "--eps", "0.2"]),
    ("adv-train", ["--mode", "trades", "--steps", "3", "--step", "0.1"]),
    ("adv-train", ["--mode", "madry", "--steps", "3", "--step", "0.1", "--eps-warmup", "1"]),
])
def test_cli_defend_end_to_end(tmp_path, checkpoint, kind, extra, capsys) -> None:
    out = tmp_path / kind
    rc = main(["defend", kind, "--model", checkpoint, "--data", "digits", "--out", str(out), "--epochs", "2",
               "--lr", "0.01", "-n", "30", "--attacks", "fgsm-0.1,pgd-0.3", "--pgd-steps", "5", *extra])
    assert rc == 0
    report = json.loads((out / "evaluation.json").read_text())
    assert report["defense"] == kind and report["samples"] == 30
    if "--mode" in extra:
        assert report["settings"]["mode"] == extra[1]
        assert report["settings"].get("eps_warmup", 0) == (1.0 if "--eps-warmup" in extra else 0)
    assert set(report["transfer"]) == set(report["adaptive"]) == {"fgsm-0.1", "pgd-0.3"}
    defended, meta = models.load_with_meta(out)
    assert meta["defense"]["kind"] == kind and meta["metrics"]["test_accuracy"] > 0.3
    assert check_trained(meta) == meta["metrics"]["test_accuracy"]
    assert defended(torch.rand(3, 1, 8, 8)).shape == (3, 10)
    printed = capsys.readouterr().out
    assert "adaptive" in printed and "transfer" in printed and "evaluation.json" in printed


def test_cli_rejects_an_untrained_checkpoint(tmp_path, capsys) -> None:
    folder = tmp_path / "untrained"
    models.save(models.build(TINY, **ARCH["kwargs"]), folder, {"bounds": [0.0, 1.0]})
    rc = main(["defend", "dae", "--model", str(folder), "--data", "digits", "--out", str(tmp_path / "o")])
    assert rc == 2  # its model.json records no accuracy: measured on the test split, near chance
    assert "measured test accuracy" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_targets_avoid_true_class_and_prediction(trained, digits, tmp_path) -> None:
    # A targeted attack aims at seeded random classes other than the true one; a sample the
    # undefended model already predicts as its target is not attacked (no perturbation).
    model, _ = trained
    x, y = digits[1].x[:100], digits[1].y[:100]
    specs = [AttackSpec("jsma", "jsma", {"theta": 1.0, "gamma": 0.05}, targeted=True)]
    evaluate_defense(model, model, x, y, specs, batch_size=50, progress=False, out=tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    pred = model(x).argmax(dim=1)
    assert len(rows) == 100 and all(r["target"] is not None and r["target"] != r["label"] for r in rows)
    for r in rows:
        assert r["pred_before"] == int(pred[r["index"]])
        if r["pred_before"] == r["target"]:
            assert r["success"] and r["l0"] == 0 and r["iterations"] == 0


def test_default_attacks_run_on_every_defended_model(trained, dae, digits, switched) -> None:
    model, _ = trained
    x, y = digits[1].x[:6], digits[1].y[:6]
    specs = [s for s in default_attacks(isi_iterations=3)
             if s.name in ("jsma-0.145", "isi-l0")]
    assert [s.name for s in specs] == ["jsma-0.145", "isi-l0"]
    for defended in (Purified(model, dae), switched[0]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            report = evaluate_defense(defended, model, x, y, specs, batch_size=6, progress=False)
        for name in ("jsma-0.145", "isi-l0"):
            assert report["worst"][name] < report["clean_accuracy"]
