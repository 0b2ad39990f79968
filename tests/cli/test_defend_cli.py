"""``salmap defend`` evaluates through the evaluation pipeline: resume (the trained defense and the
finished units reused), the folder lock and claim, and the metric names of ``salmap attack``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from salmap import data, models
from salmap.cli import main
from salmap.evaluation.execute import JUDGE_FIELDS, ROW_FIELDS
from salmap.training import train_classifier

ARCH = "tiny-defend-cli-cnn"


@models.register(ARCH)
def tiny_cnn(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """conv-ReLU-pool | flatten-fc for 8x8 digits."""
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 16, num_classes))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    train, test = data.load_dataset("digits", "train"), data.load_dataset("digits", "test")
    torch.manual_seed(0)
    model = models.build(ARCH, in_channels=1, num_classes=10)
    report = train_classifier(model, train.x, train.y, test.x, test.y, epochs=4, lr=1e-2, seed=0, progress=False)
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    models.save(model, folder, {"bounds": [0.0, 1.0], "input_shape": [1, 8, 8],
                                "class_names": [str(i) for i in range(10)],
                                "metrics": {"test_accuracy": float(report.test_accuracy or 0.0)}})
    return str(folder)


def defend_args(checkpoint: str, out: Path) -> list[str]:
    return ["defend", "block-switch", "--model", checkpoint, "--data", "digits", "--out", str(out), "--epochs", "1",
            "--lr", "0.01", "--channels", "2", "-n", "24", "--attacks", "fgsm-0.1,jsma", "--attacks", "pgd:eps=0.2,steps=3",
            "--device", "cpu"]


def rows_of(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("seconds")
    return rows


def without_timing(report: dict) -> dict:
    drop = {"seconds", "eval_seconds", "units_resumed", "checkpoint", "train_seconds"}
    out = {k: v for k, v in report.items() if k not in drop}
    out["results"] = [{k: v for k, v in e.items() if k not in ("seconds", "throughput")} for e in report["results"]]
    return out


def test_defend_resumes_reusing_the_trained_defense_and_the_finished_units(tmp_path: Path, checkpoint: str,
                                                                          monkeypatch, capsys) -> None:
    whole = tmp_path / "whole"
    assert main(defend_args(checkpoint, whole)) == 0
    expected = json.loads((whole / "evaluation.json").read_text())
    assert expected["schema_version"] == 2 and expected["samples"] == 24 and expected["units_resumed"] == 0
    assert set(expected["transfer"]) == set(expected["adaptive"]) == set(expected["worst"]) == {
        "fgsm-0.1", "jsma", "pgd:eps=0.2,steps=3"}
    assert expected["attack_model"] == "EOT"
    rows = rows_of(whole)
    assert len(rows) == 2 * 3 * 24  # transfer and adaptive, three attacks, every sample
    assert all(set(ROW_FIELDS) - {"seconds"} | set(JUDGE_FIELDS) <= set(r) for r in rows)
    # the report's accuracies are the rows' judged predictions
    for setting in ("transfer", "adaptive"):
        mine = [r for r in rows if r["model"] == setting and r["attack"] == "fgsm-0.1"]
        assert expected[setting]["fgsm-0.1"] == pytest.approx(
            sum(r["judge_after"] == r["label"] for r in mine) / 24)
    worst = [all(r["judge_after"] == r["label"] for r in rows if r["index"] == i and r["attack"] == "jsma")
             for i in {r["index"] for r in rows}]
    assert expected["worst"]["jsma"] == pytest.approx(sum(worst) / 24)
    assert expected["robust_accuracy"] <= min(expected["worst"].values())
    # the targeted attack aims at random other classes
    assert all(r["target"] is not None and r["target"] != r["label"] for r in rows if r["attack"] == "jsma")
    capsys.readouterr()

    # An interrupted run: training finished, some units written, the merge never reached.
    out = tmp_path / "out"
    assert main(defend_args(checkpoint, out)) == 0
    units = sorted((out / "batches").glob("*.jsonl"))
    for name in ("results.jsonl", "summary.json", "evaluation.json"):
        (out / name).unlink()
    for path in units[::2]:
        path.unlink()
    kept = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in units[1::2]}
    (out / "batches" / ".m001-a002-b000000.jsonl.tmp-4242").write_text('{"model": "adap')  # a cut write

    def no_training(*args, **kwargs):
        raise AssertionError("the defense was trained again")

    monkeypatch.setattr("salmap.cli.defend.train_block_switch", no_training)
    capsys.readouterr()
    assert main(defend_args(checkpoint, out)) == 0
    printed = capsys.readouterr().out
    assert "reusing the defended checkpoint" in printed and f"{len(kept)} units resumed" in printed
    for path, (content, mtime) in kept.items():  # finished units were not computed again
        assert path.read_bytes() == content and path.stat().st_mtime_ns == mtime
    assert not list((out / "batches").glob(".*tmp*"))
    assert rows_of(out) == rows
    resumed = json.loads((out / "evaluation.json").read_text())
    assert resumed["units_resumed"] == len(kept)
    assert without_timing(resumed) == without_timing(expected)

    # another run in the same folder is refused; --overwrite replaces only salmap's files
    (out / "notes.txt").write_text("mine")
    other = [*defend_args(checkpoint, out)[:-2], "--seed", "3"]
    assert main(other) != 0
    assert "holds a different run" in capsys.readouterr().err
    monkeypatch.undo()
    assert main([*other, "--overwrite", "--no-eval"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "evaluation.json").exists() and (out / "training.json").is_file()
    assert not (out / "results.jsonl").exists()


def test_defend_reports_the_metric_names_of_attack(tmp_path: Path, checkpoint: str) -> None:
    assert main(["attack", "fgsm", "--model", checkpoint, "--data", "digits", "-n", "6", "--eps", "0.1",
                 "--out", str(tmp_path / "attack"), "--device", "cpu"]) == 0
    attack = json.loads((tmp_path / "attack" / "summary.json").read_text())["results"][0]
    assert main(["defend", "dae", "--model", checkpoint, "--data", "digits", "--out", str(tmp_path / "defend"),
                 "--epochs", "2", "--lr", "0.01", "--width", "16", "--adversarial", "none", "-n", "6", "--attacks", "fgsm-0.1",
                 "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "defend" / "evaluation.json").read_text())
    names = {"success_rate", "l0_mean", "l0_mean_success", "l2_mean", "l2_mean_success", "linf_mean",
             "linf_mean_success", "l0_fraction_mean", "iterations_mean", "clean_accuracy", "adversarial_accuracy"}
    assert names <= set(attack)
    assert [(e["model"], e["attack"]) for e in report["results"]] == [("transfer", "fgsm-0.1"),
                                                                       ("adaptive", "fgsm-0.1")]
    for entry in report["results"]:
        assert set(attack) - {"seconds", "throughput"} <= set(entry)
        assert entry["judge_clean_accuracy"] == pytest.approx(report["clean_accuracy"])
    assert report["transfer"]["fgsm-0.1"] == pytest.approx(report["results"][0]["judge_accuracy"])
    # the transfer examples are crafted on the undefended model: the same rows as salmap attack's
    attack_rows = rows_of(tmp_path / "attack")
    transfer = [r for r in rows_of(tmp_path / "defend") if r["model"] == "transfer"]
    keys = ("index", "label", "success", "l0", "l2", "linf", "pred_before", "pred_after")
    assert [{k: r[k] for k in keys} for r in transfer] == [{k: r[k] for k in keys} for r in attack_rows]


def test_a_run_that_died_while_training_trains_again(tmp_path: Path, checkpoint: str, monkeypatch, capsys) -> None:
    out = tmp_path / "out"

    def dies(*args, **kwargs):
        raise RuntimeError("killed while training")

    monkeypatch.setattr("salmap.cli.defend.train_block_switch", dies)
    assert main(defend_args(checkpoint, out)) != 0
    assert (out / "run.json").is_file() and not (out / "training.json").exists()
    monkeypatch.undo()
    capsys.readouterr()
    assert main(defend_args(checkpoint, out)) == 0  # the same run: claimed again, the defense trained now
    printed = capsys.readouterr().out
    assert "reusing" not in printed and "block-switch: test accuracy" in printed
    assert json.loads((out / "evaluation.json").read_text())["units_resumed"] == 0


def test_defend_takes_image_size_for_a_folder_of_mixed_sizes(tmp_path: Path, checkpoint: str, capsys) -> None:
    """--image-size N, as the data layer's error asks for: the images resized to the model's 8x8."""
    import numpy as np
    from PIL import Image

    x, y = data.load("digits", split="all")
    for i in range(300):
        folder = tmp_path / "imgs" / str(int(y[i]))
        folder.mkdir(parents=True, exist_ok=True)
        side = 8 if i % 2 else 16
        pixels = (x[i, 0].numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).resize((side, side), Image.NEAREST).save(folder / f"{i}.png")
    argv = ["defend", "block-switch", "--model", checkpoint, "--data", f"folder:{tmp_path / 'imgs'}", "--out",
            str(tmp_path / "d"), "--epochs", "2", "--lr", "0.01", "--channels", "2", "-n", "4", "--attacks", "fgsm",
            "--device", "cpu"]
    assert main(argv) == 2
    assert "pass image_size (--image-size N)" in capsys.readouterr().err
    assert main([*argv, "--image-size", "8"]) == 0
    assert json.loads((tmp_path / "d" / "evaluation.json").read_text())["clean_accuracy"] is not None


@pytest.mark.parametrize("flags, message", [
    (["dae", "--epochs", "0"], "--epochs must be in [1, inf), got 0"),
    (["dae", "--width", "0"], "--width must be in [1, 4096], got 0"),
    (["dae", "--width", "100000000"], "--width must be in [1, 4096], got 100000000"),  # (was a 4 GB allocation)
    (["dae", "--lr", "0"], "--lr must be in (0.0, inf), got 0.0"),
    (["dae", "--lr", "1e39"], "--lr must be at most 3.403e+38 (the largest float32), got 1e+39"),  # (was a raw error)
    (["dae", "--pgd-steps", "0"], "--pgd-steps must be in [1, inf), got 0"),  # was ZeroDivisionError, exit 1
    (["block-switch", "--channels", "1"], "--channels must be in [2, 256], got 1"),
    (["block-switch", "--channels", "100000"], "--channels must be in [2, 256], got 100000"),
    # these four were the library's eps, split, eps_warmup (after the folder was claimed) and alpha
    (["dae", "--eps", "-1"], "--eps must be in [0.0, inf), got -1.0"),
    (["block-switch", "--split", "5"], "--split must be in [1, 4], got 5"),
    (["adv-train", "--eps-warmup", "-1"], "--eps-warmup must be in [0.0, inf), got -1.0"),
    (["adv-train", "--alpha", "2"], "--alpha must be in [0.0, 1.0], got 2.0"),
])
def test_defend_flags_out_of_range_fail_before_the_folder_is_claimed(tmp_path: Path, checkpoint: str, capsys,
                                                                       flags, message) -> None:
    out = tmp_path / "d"
    argv = ["defend", *flags, "--model", checkpoint, "--data", "digits", "--out", str(out), "--attacks", "fgsm"]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # the corrected command needs no --overwrite
