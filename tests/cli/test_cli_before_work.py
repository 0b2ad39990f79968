"""User-facing checks of the command line that must hold before any work: a wrong argument is one
line naming the flag, the value and why, found before the output folder is made; a request the
data cannot meet is said, never silently changed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import error_line as _error_line

from salmap.cli import main

COMMANDS_WITH_OUT = [
    ["attack", "fgsm", "--model", "{lenet}"],
    ["explain", "--model", "{lenet}"],
    ["evaluate", "--model", "{lenet}", "--attack", "fgsm"],
    ["train"],
    ["defend", "dae", "--model", "{lenet}"],
    ["demo"],
]


@pytest.mark.parametrize("argv", COMMANDS_WITH_OUT, ids=lambda a: a[0])
@pytest.mark.parametrize("where", ["name-too-long", "proc"])
def test_out_that_cannot_be_created_names_the_flag(tmp_path, lenet28, capsys, monkeypatch, argv, where):
    """Only trying finds some folders that cannot be made (a name longer than the file system takes,
    a folder under /proc): ``--out VALUE cannot be created: WHY``, exit 2, before any work (was
    ``[Errno 2] No such file or directory: '/proc/nope'`` from the first write, without ``--out``)."""
    if where == "proc" and not Path("/proc/self").is_dir():
        pytest.skip("needs /proc")
    monkeypatch.chdir(tmp_path)
    out = str(tmp_path / ("a" * 300) / "x") if where == "name-too-long" else "/proc/nope/x"
    argv = [a.format(lenet=lenet28) for a in argv]
    assert main([*argv, "--out", out]) == 2
    err = _error_line(capsys, argv[0])
    assert f"--out {out} cannot be created: " in err
    assert sorted(os.listdir(tmp_path)) == ["lenet"]  # nothing made, the model not trained


def test_out_check_makes_nothing_it_leaves(tmp_path, lenet28, capsys):
    """A folder that can be made passes the check and the run makes it; the check itself leaves none."""
    from salmap.cli.checks import check_output_path

    assert check_output_path(tmp_path / "new" / "deep") == tmp_path / "new" / "deep"
    assert not (tmp_path / "new").exists()


# -- -n past the split: all of it, said in one line (never silently); a run file's data.num is refused --


@pytest.fixture
def small_npz(tmp_path):
    """An npz data set of 12 training and 5 test images of 28x28 digits-like noise."""
    import numpy as np

    rng = np.random.default_rng(0)
    path = tmp_path / "small.npz"
    np.savez(path, x=rng.random((12, 1, 28, 28), dtype=np.float32), y=np.arange(12) % 10,
             x_test=rng.random((5, 1, 28, 28), dtype=np.float32), y_test=np.arange(5))
    return f"npz:{path}"


NOTE = "-n 10000 is more than the 5 test images of {data}: using all 5"
TAKING_N = [
    (["attack", "fgsm", "--model", "{lenet}"], "results.json"),
    (["explain", "--model", "{lenet}"], "summary.json"),
    (["defend", "dae", "--model", "{lenet}", "--epochs", "1", "--attacks", "fgsm", "--width", "4"], "evaluation.json"),
    (["evaluate", "--model", "{lenet}", "--attack", "fgsm", "--no-report"], "summary.json"),
]


@pytest.mark.parametrize("argv, written", TAKING_N, ids=lambda a: a[0] if isinstance(a, list) else None)
def test_n_past_the_split_uses_all_of_it_and_says_so_once(tmp_path, lenet28, small_npz, capsys, argv, written):
    """``-n 10000`` on a split of 5 runs on the 5 and prints one line naming -n, the value and the
    split's size, in attack, explain, defend and evaluate alike (evaluate refused; the others were
    silent); without -n the default says nothing on small data."""
    import json

    argv = [a.format(lenet=lenet28) for a in argv]
    base = [*argv, "--data", small_npz, "--out", str(tmp_path / "o")]
    assert main([*base, "-n", "10000"]) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if "-n " in line] == [NOTE.format(data=small_npz)], out
    summary = json.loads((tmp_path / "o" / written).read_text())
    assert _indices(tmp_path / "o") == set(range(5)) or summary.get("images") == 5, summary
    assert main([*base[:-1], str(tmp_path / "default")]) == 0
    assert "is more than" not in capsys.readouterr().out


def _indices(out: Path) -> set[int]:
    """The sample indices of a run folder's results.jsonl (none without one)."""
    import json

    path = out / "results.jsonl"
    return {json.loads(line)["index"] for line in path.read_text().splitlines()} if path.is_file() else set()


def test_run_file_num_past_the_split_is_refused_and_the_flag_takes_all(tmp_path, lenet28, small_npz, capsys):
    """A run file is a specification: its ``data.num`` past the split is refused before any work;
    ``-n`` on the command line replaces it and behaves like the other commands' ``-n``."""
    import yaml

    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"output": str(tmp_path / "o"), "models": [{"path": lenet28}],
                                   "attacks": [{"attack": "fgsm"}], "report": False,
                                   "data": {"name": small_npz, "num": 7}}))
    assert main(["evaluate", str(run)]) == 2
    assert "data.num: asks for 7 samples but" in _error_line(capsys, "evaluate")
    assert not (tmp_path / "o").exists()
    assert main(["evaluate", str(run), "-n", "10000"]) == 0
    assert NOTE.format(data=small_npz) in capsys.readouterr().out
    assert _indices(tmp_path / "o") == set(range(5))


def test_demo_checks_its_counts_before_training(tmp_path, capsys, monkeypatch):
    """``salmap demo -n`` past the 1,000 test images takes them all and says so before anything is
    trained (the evaluation refused it after the training); a count below 1 is refused then too."""
    from salmap.cli import demo

    def stop(*args, **kwargs):
        raise ValueError("stopped after the checks")

    monkeypatch.setattr(demo, "output_folder", stop)
    assert main(["demo", "-n", "10000", "--out", str(tmp_path / "d")]) == 2
    captured = capsys.readouterr()
    assert "-n 10000 is more than the 1,000 test images of mnist-sample: using all 1,000" in captured.out
    assert "stopped after the checks" in captured.err
    for flag in ("-n", "--seg-num", "--epochs", "--seg-epochs", "--defense-epochs"):
        assert main(["demo", flag, "0", "--out", str(tmp_path / "d")]) == 2
        assert "must be positive, got 0" in _error_line(capsys, "demo")


# -- an occlusion patch larger than the images: refused before the output folder is made ----------


def test_occlusion_patch_larger_than_the_input_fails_before_the_folder(tmp_path, lenet28, capsys):
    """``salmap explain --patch 40`` on 28x28 images, and a run file's occlusion ``patch: 30``, are one
    line naming the flag or key, the value and the input size, and no output folder is made (the
    patch was found too large only when the maps were computed, in a folder already claimed)."""
    import yaml

    out = tmp_path / "o"
    argv = ["explain", "--model", lenet28, "-n", "2", "--method", "gradient,occlusion", "--out", str(out)]
    assert main([*argv, "--patch", "40"]) == 2
    assert "--patch 40 is larger than the input (28x28 images of --data mnist-sample)" in _error_line(capsys, "explain")
    assert not out.exists()
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"output": str(out), "models": [{"path": lenet28}], "attacks": [{"attack": "fgsm"}],
                                   "data": {"num": 2}, "explanations": [{"explainer": "occlusion",
                                                                         "params": {"patch": 30}}]}))
    assert main(["evaluate", str(run)]) == 2
    assert "explanations[0].params.patch: 30 is larger than the input (28x28 images of mnist-sample)" in \
        _error_line(capsys, "evaluate")
    assert not out.exists()
    assert main([*argv, "--patch", "28"]) == 0  # a patch as large as the input fits


# -- messages that name what applies -------------------------------------------------------------


def test_segmentation_shape_mismatch_does_not_suggest_image_size(tmp_path, lenet28, capsys):
    """--image-size resizes classification images only (a segmentation set refuses it), so a model
    that does not take a segmentation set's samples is told to pick other data or another model."""
    argv = ["explain", "--model", lenet28, "--data", "mnist-seg", "-n", "2", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = _error_line(capsys, "explain")
    assert "expects inputs of shape (1, 28, 28) but --data mnist-seg has samples of shape (1, 64, 64)" in err
    assert "pick segmentation data of that shape or a model that takes --data mnist-seg's samples" in err
    assert "resize with --image-size" not in err
    assert main([*argv, "--image-size", "28"]) == 2  # what the earlier message suggested: refused
    assert "image_size applies to classification images" in _error_line(capsys, "explain")
    assert main(["explain", "--model", lenet28, "--data", "digits", "-n", "2", "--out", str(tmp_path / "o")]) == 2
    assert "resize with --image-size N" in _error_line(capsys, "explain")  # classification images: it applies
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv, message", [
    ([], "error: a run file or flags are needed: salmap evaluate run.yaml, or salmap evaluate --model PATH "
         "--attack NAME --out DIR"),
    (["--model", "m", "--out", "o"], "error: without a run file, the following arguments are required: --attack"),
    (["--data", "digits"], "error: a run file or flags are needed"),
])
def test_evaluate_without_a_run_file_is_a_usage_error_naming_flags(tmp_path, capsys, monkeypatch, argv, message):
    """``salmap evaluate`` alone printed the run file's keys (``output: is required``, ``models: ...``);
    like argparse's errors it now prints the usage and names the flags (or the run file) needed."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["evaluate", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: salmap evaluate") and f"salmap evaluate: {message}" in err
    assert "output: is required" not in err and not os.listdir(tmp_path)


# -- a folder data set: TIFF (and the other kinds Pillow reads) read, a class with no image refused --


def _class_folder(root: Path, name: str, suffix: str, count: int = 3, **save) -> None:
    import numpy as np
    from PIL import Image

    (root / name).mkdir(parents=True)
    rng = np.random.default_rng(len(name))
    for i in range(count):
        Image.fromarray((rng.random((28, 28)) * 255).astype("uint8")).save(root / name / f"{i}{suffix}", **save)


def test_folder_reads_tiff_and_refuses_a_class_without_images(tmp_path, lenet28, capsys):
    """A class folder of .tif/.tiff files is read (it was skipped: a silent empty class); one of files
    salmap does not read is one line naming the folder and the kinds read, before any work."""
    import numpy as np
    from PIL import Image

    from salmap import data

    root = tmp_path / "photos"
    _class_folder(root, "a", ".png")
    _class_folder(root, "b", ".tif", compression="tiff_lzw")
    _class_folder(root, "c", ".tiff")
    _class_folder(root, "d", ".webp", lossless=True)
    Image.fromarray(np.full((28, 28), 1000, dtype=np.uint16)).save(root / "c" / "16bit.tif")
    ds = data.load_dataset(f"folder:{root}", "all")
    assert ds.class_names == ["a", "b", "c", "d"] and torch_counts(ds.y) == [3, 3, 4, 3]
    flat = [x for x, label in zip(ds.x[:], ds.y.tolist(), strict=True) if label == 2 and float(x.max() - x.min()) == 0]
    assert len(flat) == 1 and float(flat[0][0, 0, 0]) == pytest.approx(1000 / 65535)  # 16 bits scaled by 65535
    out = tmp_path / "o"
    argv = ["attack", "fgsm", "--model", lenet28, "--data", f"folder:{root}", "--split", "all", "--out", str(out)]
    assert main([*argv, "-n", "13"]) == 0
    assert "is more than" not in capsys.readouterr().out
    (root / "e").mkdir()
    (root / "e" / "scan.heic").write_bytes(b"not read")
    (root / "e" / ".DS_Store").write_bytes(b"")
    assert main([*argv, "--overwrite"]) == 2
    err = _error_line(capsys, "attack")
    assert f"class folder {root / 'e'} holds only .heic files, no image salmap reads (.bmp, .gif" in err
    assert ".tif, .tiff, .webp)" in err


def torch_counts(y) -> list[int]:
    return [int(c) for c in y.bincount()]


# -- errors that name the flag (they named the library's parameter: dataset, epochs, batch_size) --


@pytest.mark.parametrize("argv, message", [
    (["attack", "fgsm", "--model", "{lenet}", "--data", "mnist-smaple"],
     "--data must be a dataset name or kind:PATH, one of ['digits', 'mnist-sample'"),
    (["explain", "--model", "{lenet}", "--data", "nope"], "got 'nope'"),
    (["evaluate", "--model", "{lenet}", "--attack", "fgsm", "--data", "idx:"], "--data 'idx:' needs a path after 'idx:'"),
    (["defend", "dae", "--model", "{lenet}", "--data", "foo:bar"], "--data must be a dataset name or kind:PATH"),
    (["train", "--data", "nope"], "--data must be a dataset name"),
    (["train", "--epochs", "0"], "--epochs must be in [1, inf), got 0"),
    (["train", "--batch-size", "0"], "--batch-size must be in [1, inf), got 0"),
    (["train", "--lr", "0"], "--lr must be in (0.0, inf), got 0.0"),
    (["train", "--model", "resnet19"], "--model must be one of ["),
    (["train", "--data", "digits"], "--model lenet cannot be built for --data digits (1x8x8 images): input_size must "
                                    "be between 16x16 and 512x512 for lenet, got (8, 8) (--image-size N resizes them)"),
], ids=["attack-data", "explain-data", "evaluate-data-kind", "defend-data", "train-data", "train-epochs",
        "train-batch-size", "train-lr", "train-model", "train-model-input-size"])
def test_errors_name_the_flag(tmp_path, lenet28, capsys, argv, message):
    argv = [a.format(lenet=lenet28) for a in argv]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    assert message in _error_line(capsys, argv[0])
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "--batch-size (batch_size): must be at least 1, got 0"),
    (["--attack", "fgsmm"], "--attack (attacks[0].attack): must be one of"),
    (["--attack", "fgsm:eps=x"], "--attack (attacks[0].params.eps): eps must be a number, got 'x'"),
    (["--explain", "nope"], "--explain (explanations[0].explainer): must be one of"),
])
def test_evaluate_problems_with_flag_values_name_the_flag(tmp_path, lenet28, capsys, flags, message):
    """A problem with a value a flag gave is named by the flag beside its run-file key (was the key alone)."""
    argv = ["evaluate", "--model", lenet28, "--attack", "fgsm", "--out", str(tmp_path / "o")]
    if flags[0] == "--attack":
        argv = argv[:3] + argv[5:]
    assert main([*argv, *flags]) == 2
    assert message in _error_line(capsys, "evaluate")
    assert not (tmp_path / "o").exists()


def test_evaluate_problems_of_the_run_file_keep_their_key(tmp_path, lenet28, capsys):
    import yaml

    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"output": str(tmp_path / "o"), "models": [{"path": lenet28}], "batch_size": 0,
                                   "attacks": [{"attack": "fgsm"}]}))
    assert main(["evaluate", str(run)]) == 2
    err = _error_line(capsys, "evaluate")
    assert "problem: batch_size: must be at least 1, got 0" in err and "--batch-size" not in err
