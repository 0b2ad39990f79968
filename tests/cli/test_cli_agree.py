"""The commands agree on what a flag takes and say what they change: ``--seed``, Grad-CAM's
``--layer``, ``--rows`` past ``-n``, a missing ``folder:`` path, explanations without attacks. Each
wrong value is one line naming the flag, found before the output folder is made."""

from __future__ import annotations

import json

import pytest
from conftest import error_line as _error_line

from salmap.cli import main

SEEDED = [
    ["attack", "pgd", "--model", "{lenet}"],
    ["attack", "fgsm", "--model", "{lenet}"],
    ["explain", "--model", "{lenet}"],
    ["evaluate", "--model", "{lenet}", "--attack", "fgsm"],
    ["defend", "dae", "--model", "{lenet}"],
    ["train"],
]


@pytest.mark.parametrize("seed", ["-1", str(2**63)])
@pytest.mark.parametrize("argv", SEEDED, ids=lambda a: "-".join(a[:2]) if a[0] == "attack" else a[0])
def test_seed_out_of_range_is_refused_alike(tmp_path, lenet28, capsys, argv, seed):
    """``--seed -1`` was taken by attack fgsm, explain, defend and train (torch.manual_seed takes -1 as
    2**64 - 1), refused by attack pgd as the library's ``seed`` after the device line and by evaluate as
    ``--seed (seed)``: every command now refuses it in the same line, before any work."""
    argv = [a.format(lenet=lenet28) for a in argv]
    assert main([*argv, "-n" if argv[0] != "train" else "--epochs", "2", "--seed", seed,
                 "--out", str(tmp_path / "o")]) == 2
    err = _error_line(capsys, argv[0])
    assert f"error: --seed must be an integer from 0 to 2**63 - 1, got {seed}\n" in err
    assert not (tmp_path / "o").exists()


def test_largest_seed_is_taken(tmp_path, lenet28, capsys):
    """The rule's upper end runs (PGD's random start and the random targets take it)."""
    out = tmp_path / "o"
    assert main(["attack", "pgd", "--model", lenet28, "-n", "2", "--steps", "1", "--targeted", "random",
                 "--seed", str(2**63 - 1), "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())


# -- Grad-CAM's layer: named --layer (or --gradcam-layer), with the model's layers and a close name --


@pytest.mark.parametrize("flag, value, close", [("--layer", "feature.0", "features.0"),
                                                ("--gradcam-layer", "classifer", "classifier"),
                                                ("--layer", "nope", None)])
def test_gradcam_layer_that_is_not_there_names_the_flag(tmp_path, lenet28, capsys, flag, value, close):
    """Was ``layer 'nope' is not a module of LeNet; top-level modules: ...`` (the library's name)."""
    out = tmp_path / "o"
    assert main(["explain", "--method", "gradient,gradcam", flag, value, "--model", lenet28, "-n", "2",
                 "--out", str(out)]) == 2
    err = _error_line(capsys, "explain")
    hint = f" (did you mean {close!r}?)" if close else ""
    assert f"error: {flag} {value!r} is not a layer of --model {lenet28}{hint}; its layers: features, features.0, " in err
    assert "classifier.5" in err and "did you mean" in err if close else "did you mean" not in err
    assert not out.exists()


def test_gradcam_layer_of_a_model_without_convolutions_names_the_flag(tmp_path, capsys, monkeypatch):
    """A model with no layer4 and no convolution needs --layer: said with the flag (was ``layer is needed``)."""
    (tmp_path / "mlp_factory.py").write_text(
        "from torch import nn\n\ndef build():\n    return nn.Sequential(nn.Flatten(), nn.Linear(784, 784), nn.Unflatten(1, (1, 28, 28)),"
        " nn.Flatten(), nn.Linear(784, 10))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "o"
    assert main(["explain", "--method", "gradcam", "--model", "mlp_factory:build", "--allow-code", "-n", "2",
                 "--out", str(out)]) == 2
    assert "error: --layer is needed: Sequential has no layer4 and no convolution" in _error_line(capsys, "explain")
    assert not out.exists()
    assert main(["explain", "--method", "gradcam", "--layer", "2", "--model", "mlp_factory:build", "--allow-code",
                 "-n", "2", "--out", str(out), "-q"]) == 0


# -- --rows past the images explained: all of them drawn, said in one line as -n says it --


def test_rows_past_the_images_draws_all_and_says_so_once(tmp_path, lenet28, capsys):
    """``--rows 20`` with ``-n 3`` drew 3 rows silently; now it says so in one line like -n's note,
    only when --rows was given, and draws the same picture as ``--rows 3``."""
    from PIL import Image

    base = ["explain", "--model", lenet28, "-n", "3"]
    assert main([*base, "--rows", "20", "--out", str(tmp_path / "many")]) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if "--rows" in line] == [
        "--rows 20 is more than the 3 images explained: using all 3"], out
    assert main([*base, "--rows", "3", "--out", str(tmp_path / "three")]) == 0
    assert main([*base, "--out", str(tmp_path / "default")]) == 0  # the default 8 says nothing
    assert "is more than" not in capsys.readouterr().out
    sizes = {Image.open(tmp_path / d / "explain.png").size for d in ("many", "three", "default")}
    assert len(sizes) == 1, sizes


# -- a kind:PATH whose path is not there: named by --data (or the run file's key), before any work --


@pytest.mark.parametrize("argv", [
    ["attack", "fgsm", "--model", "{lenet}", "-n", "2"],
    ["explain", "--model", "{lenet}"],
    ["evaluate", "--model", "{lenet}", "--attack", "fgsm"],
    ["defend", "dae", "--model", "{lenet}"],
    ["train"],
], ids=lambda a: a[0])
def test_missing_data_folder_names_the_flag(tmp_path, lenet28, capsys, argv):
    """Was ``image folder /x is not a folder`` (evaluate: ``--data (data.name): ...``), without --data."""
    argv = [a.format(lenet=lenet28) for a in argv]
    missing = tmp_path / "no-such-images"
    assert main([*argv, "--data", f"folder:{missing}", "--out", str(tmp_path / "o")]) == 2
    err = _error_line(capsys, argv[0])
    assert err.endswith(f"error: --data 'folder:{missing}': the folder {missing} does not exist\n"), err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind, path, problem", [
    ("idx", "none", "the folder {p} does not exist"),
    ("npz", "none.npz", "the file {p} does not exist"),
    ("npz", "", "{p} is a folder, not a file"),
    ("folder", "model.json", "{p} is a file, not a folder"),
])
def test_data_path_of_the_wrong_kind_names_the_flag(tmp_path, lenet28, capsys, kind, path, problem):
    p = tmp_path / path if path != "model.json" else tmp_path / "lenet" / path
    p = tmp_path if not path else p
    assert main(["attack", "fgsm", "--model", lenet28, "--data", f"{kind}:{p}", "--out", str(tmp_path / "o")]) == 2
    assert f"error: --data '{kind}:{p}': {problem.format(p=p)}\n" in _error_line(capsys, "attack")
    assert not (tmp_path / "o").exists()


def test_run_file_missing_data_folder_names_the_key(tmp_path, lenet28, capsys):
    import yaml

    missing = tmp_path / "no-such-images"
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"output": str(tmp_path / "o"), "models": [{"path": lenet28}],
                                   "data": {"name": f"folder:{missing}"}, "attacks": [{"attack": "fgsm"}]}))
    assert main(["evaluate", str(run)]) == 2
    err = _error_line(capsys, "evaluate")
    assert f"1 problem: data.name: dataset 'folder:{missing}': the folder {missing} does not exist\n" in err, err
    assert not (tmp_path / "o").exists()


# -- salmap evaluate explains only: a run file with explanations: and no attacks:, or --explain alone --


def test_evaluate_explains_only_and_writes_the_report(tmp_path, lenet28, capsys):
    """A run with explanations and no attacks was refused (``attacks: is required``) although the
    pipeline runs explanation units alone (salmap explain does): it runs, its summary has no attack
    rows and no robust accuracy, and report.html says so and shows the explanations; a rerun resumes."""
    import yaml

    run = tmp_path / "run.yaml"
    out = tmp_path / "o"
    run.write_text(yaml.safe_dump({"output": str(out), "models": [{"name": "lenet", "path": lenet28}],
                                   "data": {"name": "mnist-sample", "num": 3},
                                   "explanations": [{"explainer": "gradient"}]}))
    assert main(["evaluate", str(run), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "lenet: gradient explained 3 samples (figures/m00-e00-explain.png)" in printed, printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["results"] == [] and summary["robustness"] == []
    assert [(e["explainer"], e["samples"]) for e in summary["explanations"]] == [("gradient", 3)]
    assert (out / "figures" / "m00-e00-explain.png").is_file()
    report = (out / "report.html").read_text()
    assert 'id="no-attacks"' in report and "Robust accuracy" not in report
    assert report.count("<img") == 1 and "lenet: explanation gradient" in report
    assert main(["evaluate", str(run), "--no-progress"]) == 0
    assert "1 batches resumed" in capsys.readouterr().out


def test_evaluate_explain_flag_without_attack(tmp_path, lenet28, capsys):
    out = tmp_path / "o"
    assert main(["evaluate", "--model", lenet28, "--explain", "gradient", "--explain", "occlusion", "-n", "2",
                 "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [e["explainer"] for e in summary["explanations"]] == ["gradient", "occlusion"]
    assert summary["results"] == [] and (out / "report.html").is_file()


def test_evaluate_with_neither_attacks_nor_explanations_says_what_to_add(tmp_path, lenet28, capsys):
    import yaml

    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"output": str(tmp_path / "o"), "models": [{"path": lenet28}], "attacks": []}))
    assert main(["evaluate", str(run)]) == 2
    assert ("1 problem: attacks: is required (a list with at least one entry) unless the run has explanations"
            in _error_line(capsys, "evaluate"))
    with pytest.raises(SystemExit):
        main(["evaluate", "--model", lenet28, "--out", str(tmp_path / "o")])
    assert "required: --attack (or --explain NAME to explain only)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# -- the same patterns elsewhere: --output-key and --data named by their flags --


@pytest.mark.parametrize("argv", [["attack", "fgsm"], ["explain"], ["defend", "dae"]], ids=lambda a: a[0])
def test_output_key_that_does_not_fit_names_the_flag(tmp_path, lenet28, capsys, argv):
    """Was the library's ``output_key='nope' names an entry, ...``."""
    assert main([*argv, "--model", lenet28, "--output-key", "nope", "-n", "2", "--out", str(tmp_path / "o")]) == 2
    err = _error_line(capsys, argv[0])
    assert err.endswith("error: --output-key 'nope' names an entry, but the model returned a plain tensor\n"), err
    assert not (tmp_path / "o").exists()


def test_output_key_missing_from_a_dict_output_names_the_flag(tmp_path, capsys, monkeypatch):
    (tmp_path / "dict_factory.py").write_text(
        "from torch import nn\n\nclass Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))\n\n    def forward(self, x):\n"
        "        return {'logits': self.fc(x)}\n\ndef build():\n    return Net()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["attack", "fgsm", "--model", "dict_factory:build", "--allow-code", "--output-key", "scores",
                 "-n", "2", "--out", str(tmp_path / "o")]) == 2
    assert ("error: --output-key 'scores': model output dict has no key 'scores'; keys found: 'logits'\n"
            in _error_line(capsys, "attack"))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv", [["attack", "jsma-seg"], ["defend", "dae", "--data", "mnist-seg"]], ids=lambda a: a[0])
def test_model_that_cannot_take_the_data_names_data_by_its_flag(tmp_path, lenet28, capsys, argv):
    """salmap attack jsma-seg and salmap defend said ``... but mnist-seg has samples of shape ...``."""
    assert main([*argv, "--model", lenet28, "-n", "2", "--out", str(tmp_path / "o")]) == 2
    assert "but --data mnist-seg has samples of shape (1, 64, 64)" in _error_line(capsys, argv[0])
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv", [["explain", "--method", "lrp"], ["attack", "isi"]], ids=lambda a: a[0])
def test_lrp_on_a_model_ending_in_log_softmax_is_refused_before_the_folder(tmp_path, capsys, monkeypatch, argv):
    """LRP passed a final ``log_softmax`` its plain gradient as relevance, silently; now its one-sample
    pass names it, exit 2, before the output folder is made."""
    (tmp_path / "log_probabilities.py").write_text(
        "import torch.nn.functional as F\nfrom torch import nn\n\nclass Net(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))\n\n"
        "    def forward(self, x):\n        return F.log_softmax(self.body(x), dim=1)\n\n"
        "def build():\n    return Net()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "o"
    assert main([*argv, "--model", "log_probabilities:build", "--allow-code", "-n", "2", "--out", str(out)]) == 2
    line = _error_line(capsys, argv[0])
    assert "LRP has no rule for 'log_softmax', called in the forward of the model (Net)" in line
    assert not out.exists()
