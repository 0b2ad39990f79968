"""The bad-input matrix, command-line side: every failure is one line ``salmap CMD: error: ...``
(exit 2 for a wrong argument or input, 1 for a failed run, 130 for Ctrl-C), ``--debug`` for
the traceback, checks before any work, and the command-line conventions (``--version``,
``--quiet``, ``-v`` after the command, progress bars only on a terminal).

Test ids start with their group (``cli``, ``conventions``, ``tensors``); see
tests/test_bad_input_matrix.py and tests/evaluation/test_evaluate_faults.py for the others.
"""

from __future__ import annotations

import errno
import io
import os

import pytest
import torch
from _faults import full_disk
from conftest import error_line as _error_line
from torch import nn

from salmap import models, progress, registry
from salmap.cli import main

# -- cli: one line, the right exit status, checks before any work -------------------------


@pytest.mark.parametrize("argv, status, message", [
    (["attack", "fgsm", "--model", "{lenet}", "--device", "gpu0", "--out", "{tmp}/o"], 2,
     "--device must be cpu, cuda, cuda:N, mps or auto, got 'gpu0'"),
    (["attack", "fgsm", "--model", "{tmp}/missing", "--out", "{tmp}/o"], 2, "(not found)"),
    (["attack", "fgsm", "--model", "{tmp}/a:b", "--out", "{tmp}/o"], 2, "(not found)"),
    (["attack", "fgsm", "--model", "torch.nn:Identity", "--out", "{tmp}/o"], 2, "--allow-code"),
    (["attack", "fgsm", "--model", "{lenet}", "--out", "{tmp}/file.txt"], 2, "--out must be a folder, but"),
    (["attack", "fgsm", "--model", "{lenet}", "--out", "{tmp}/file.txt/sub"], 2, "is a file, not a folder"),
    (["attack", "fgsm", "--model", "{lenet}", "--data", "digits", "-n", "2", "--out", "{tmp}/o"], 2,
     "the model expects inputs of shape (1, 28, 28) but --data digits has samples of shape (1, 8, 8)"),
    (["explain", "--model", "{lenet}", "--data", "digits", "-n", "2", "--out", "{tmp}/o"], 2,
     "but --data digits has samples of shape (1, 8, 8)"),
    (["evaluate", "--model", "{lenet}", "--attack", "fgsm:eps=!!python/object/apply:os.system [touch PWNED]",
      "--out", "{tmp}/o"], 2, "eps must be a number, got '!!python/object/apply:os.system [touch PWNED]'"),
], ids=["cli-device-gpu0", "cli-model-missing", "cli-model-colon-missing", "cli-factory-not-allowed",
        "cli-out-is-file", "cli-out-below-file", "cli-attack-shape-mismatch", "cli-explain-shape-mismatch",
        "cli-yaml-tag"])
def test_cli_errors_are_one_line(tmp_path, lenet28, capsys, monkeypatch, argv, status, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file.txt").write_text("mine")
    argv = [a.format(tmp=tmp_path, lenet=lenet28) for a in argv]
    assert main(argv) == status
    assert message in _error_line(capsys, argv[0])
    assert (tmp_path / "file.txt").read_text() == "mine" and not (tmp_path / "PWNED").exists()
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_device_cuda_without_cuda(tmp_path, lenet28, capsys):
    assert main(["attack", "fgsm", "--model", lenet28, "--device", "cuda", "--out", str(tmp_path / "o")]) == 2
    assert "CUDA is not available" in _error_line(capsys, "attack")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_run_file_device_cuda_without_cuda(tmp_path, lenet28, capsys):
    """The run file's ``device`` is checked like ``--device``: exit 2 before the folder is claimed
    (was exit 1, 'AssertionError: Torch not compiled with CUDA enabled', after it)."""
    import yaml

    run = {"output": str(tmp_path / "o"), "device": "cuda", "data": {"name": "mnist-sample", "num": 2},
           "models": [{"path": lenet28}], "attacks": [{"attack": "fgsm"}]}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    assert main(["evaluate", str(tmp_path / "run.yaml")]) == 2
    assert "device cuda was asked for but CUDA is not available" in _error_line(capsys, "evaluate")
    assert not (tmp_path / "o").exists()


def test_cli_read_only_output_is_refused_before_work(tmp_path, lenet28, capsys, monkeypatch):
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path / "ro") else real_access(p, mode))
    (tmp_path / "ro").mkdir()
    loaded = []
    monkeypatch.setattr(models, "load_with_meta", lambda *a, **k: loaded.append(a))
    assert main(["attack", "fgsm", "--model", lenet28, "--out", str(tmp_path / "ro")]) == 2
    assert "is not writable" in _error_line(capsys, "attack")
    assert not loaded  # refused before the model was even loaded


def _raising(exc: BaseException):
    def run(args):
        raise exc

    return run


@pytest.mark.parametrize("exc, status, message", [
    (RuntimeError("mat1 and mat2\nshapes cannot be multiplied"), 1,
     "RuntimeError: mat1 and mat2 shapes cannot be multiplied (run with --debug for the traceback)"),
    (OSError(errno.ENOSPC, "No space left on device", "/x/results.json"), 1,
     "no space left on the device writing /x/results.json"),
    (PermissionError(errno.EACCES, "Permission denied", "/x/y"), 1, "Permission denied: /x/y"),
    (MemoryError(), 1, "out of memory"),
    (KeyError("k"), 1, "KeyError: 'k'"),
], ids=["cli-runtime-error", "cli-disk-full", "cli-permission", "cli-memory", "cli-key-error"])
def test_cli_failures_are_one_line(tmp_path, capsys, monkeypatch, exc, status, message):
    from salmap.cli import train

    monkeypatch.setattr(train, "run", _raising(exc))
    argv = ["train", "--out", str(tmp_path / "o")]
    assert main(argv) == status
    assert message in _error_line(capsys, "train")
    with pytest.raises(type(exc)):
        main([*argv, "--debug"])


def test_cli_ctrl_c(tmp_path, capsys, monkeypatch):
    from salmap.cli import train

    monkeypatch.setattr(train, "run", _raising(KeyboardInterrupt()))
    assert main(["train", "--out", str(tmp_path / "o")]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err and "Traceback" not in err


def test_cli_full_disk_leaves_no_temporary_files(tmp_path):
    from salmap.cli.common import write_json

    with full_disk(), pytest.raises(OSError):
        write_json(tmp_path / "results.json", {"a": list(range(100))})
    assert list(tmp_path.iterdir()) == []


# -- conventions ------------------------------------------------------------------------------


def test_conventions_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"salmap {version('salmap')}"


def test_conventions_flags_after_the_command(tmp_path, capsys, monkeypatch):
    from salmap.cli import train

    seen = []
    monkeypatch.setattr(train, "run", lambda args: seen.append(args) or print("summary") or 0)
    for argv in (["-v", "train"], ["train", "-v"], ["train", "--verbose", "-q"], ["-q", "train"]):
        assert main([*argv, "--out", str(tmp_path / "o")]) == 0
    assert [a.verbose for a in seen] == [True, True, True, False]
    assert [a.quiet for a in seen] == [False, False, True, True]
    assert capsys.readouterr().out.count("summary") == 2  # --quiet prints nothing
    assert main(["train", "-q", "--device", "cpu", "--out", str(tmp_path / "o")]) == 0
    assert capsys.readouterr().out == ""  # not even the device
    # A nested command (attack fgsm) takes the global flags too: the model is the problem, not the flags.
    assert main(["attack", "fgsm", "-q", "-v", "--allow-code", "--trust-model", "--model", str(tmp_path / "none"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "(not found)" in _error_line(capsys, "attack")


def test_conventions_progress_only_on_a_terminal(monkeypatch):
    from salmap.training import fit

    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    model = nn.Linear(4, 2)
    fit(model, torch.rand(16, 4), torch.randint(0, 2, (16,)), nn.functional.cross_entropy, epochs=2,
        batch_size=4, progress=True)
    assert stream.getvalue() == ""
    assert not progress.enabled(True)
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stderr", Terminal())
    assert progress.enabled(True) and not progress.enabled(False)
    progress.configure(quiet=True)
    try:
        assert not progress.enabled(True)
    finally:
        progress.configure(quiet=False)


# -- tensors: bad tensors and models --------------------------------------------------------


class _NaNModel(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.fc = nn.Linear(784, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)) * float("nan")


CLASSIFIER_ATTACKS = [n for n, e in registry.attacks().items() if "classification" in e.tasks]


@pytest.mark.parametrize("name", CLASSIFIER_ATTACKS, ids=[f"tensors-nan-{n}" for n in CLASSIFIER_ATTACKS])
def test_tensors_non_finite_outputs_are_an_error(name):
    attack = registry.get_attack(name).build(_NaNModel())
    with pytest.raises(ValueError, match="NaN or infinite outputs on 2 of 2 clean inputs"):
        attack(torch.rand(2, 1, 28, 28), y=torch.tensor([1, 2]))


@pytest.mark.parametrize("name", CLASSIFIER_ATTACKS, ids=[f"tensors-shape-{n}" for n in CLASSIFIER_ATTACKS])
def test_tensors_wrong_input_shape_is_named(name):
    model = models.build("lenet").eval()
    attack = registry.get_attack(name).build(model)
    for x, shape in ((torch.rand(1, 28, 28), r"\[1, 28, 28\]"), (torch.rand(2, 1, 20, 20), r"\[2, 1, 20, 20\]")):
        with pytest.raises(ValueError, match=r"lenet expects inputs of shape \(B, 1, 28, 28\), got " + shape):
            attack(x, y=torch.zeros(x.shape[0], dtype=torch.long))


class _Writer(nn.Module):
    """A model that writes into its input (in place) before classifying it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.flat = nn.Flatten()
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.data.mul_(0.5)
        return self.fc(self.flat(self.relu(self.conv(x))))


EXPLAINERS = list(registry.explainers())


@pytest.mark.parametrize("name", EXPLAINERS, ids=[f"tensors-writer-{n}" for n in EXPLAINERS])
def test_tensors_explainers_never_share_the_callers_storage(name):
    params = {"layer": "conv"} if name == "gradcam" else {}
    explainer = registry.get_explainer(name).build(_Writer(), **params)
    x = torch.rand(2, 1, 8, 8)
    before = x.clone()
    explainer.attribute(x, target=torch.tensor([0, 1]))
    assert torch.equal(x, before)


def test_tensors_unbatched_input_to_any_model_is_named():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 28 * 28, 10)).eval()
    for name in CLASSIFIER_ATTACKS:
        attack = registry.get_attack(name).build(model)
        with pytest.raises(ValueError, match=r"cannot be run on x of shape \(1, 28, 28\): .*mat1 and mat2.* must be a batch"):
            attack(torch.rand(1, 28, 28), y=torch.zeros(1, dtype=torch.long))


@pytest.mark.parametrize("seed", [2**70, -1, 1.5], ids=["tensors-seed-2e70", "tensors-seed-negative", "tensors-seed-float"])
def test_tensors_seeds_are_checked_at_construction(seed):
    from salmap.attacks import PGD
    from salmap.explain import Occlusion

    model = nn.Linear(4, 2)
    with pytest.raises(ValueError, match=r"seed must be"):
        PGD(model, seed=seed)
    with pytest.raises(ValueError, match=r"seed must be"):
        Occlusion(model, seed=seed)
    x = torch.rand(2, 4)
    assert PGD(model, seed=2**63 - 1, steps=2)(x, y=torch.tensor([0, 1])).x_adv.shape == x.shape
