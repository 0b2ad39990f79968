"""plan -> execute -> store: components that need a module, the README's run file, one load per
model, robust accuracy, and every adversarial example saved (safetensors and 8-bit PNG)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from _evaluate_support import save_lenet, write_run
from PIL import Image

from salmap import models
from salmap.attacks import FGSM
from salmap.cli import main
from salmap.evaluation import load_adversarial, read_results
from salmap.evaluation.config import load_config
from salmap.evaluation.runner import prepare
from salmap.evaluation.summary import robust_accuracy

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_lenet(tmp_path_factory.mktemp("model") / "lenet")


def test_isi_lrp_and_gradcam_with_a_layer_run_in_evaluate(tmp_path: Path, lenet: Path) -> None:
    out = tmp_path / "flags"
    assert main(["evaluate", "--model", str(lenet), "--attack", "isi:max_iter=2", "--explain", "lrp",
                 "-n", "2", "--out", str(out), "--no-progress", "--no-report"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["results"][0]["kind"] == "isi" and summary["results"][0]["rows"] == 2
    assert [e["explainer"] for e in summary["explanations"]] == ["lrp"]
    run = write_run(tmp_path / "run.yaml", output="file", data={"name": "mnist-sample", "num": 2},
                    models=[{"path": str(lenet)}], attacks=[{"attack": "isi", "params": {"max_iter": 2}}],
                    explanations=[{"explainer": "gradcam", "params": {"layer": "features.3"}}], report=False)
    assert main(["evaluate", str(run), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "file" / "summary.json").read_text())
    assert summary["explanations"][0]["explainer"] == "gradcam"
    assert (tmp_path / "file" / summary["explanations"][0]["figure"]).is_file()


def test_the_readmes_run_file_runs_as_written(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```yaml\n(output: runs/eval.*?)```", text, re.S)
    assert block is not None
    (tmp_path / "run.yaml").write_text(block.group(1))
    save_lenet(tmp_path / "runs" / "lenet")
    save_lenet(tmp_path / "runs" / "denoised", seed=1)
    # the file as written; only the sample count is lowered from the command line to keep the test short
    assert main(["evaluate", str(tmp_path / "run.yaml"), "-n", "2", "--no-progress", "--no-report"]) == 0
    summary = json.loads((tmp_path / "runs" / "eval" / "summary.json").read_text())
    assert [r["kind"] for r in summary["results"]] == ["fgsm", "jsma", "isi"] * 2
    assert len(summary["explanations"]) == 4


def test_each_model_is_loaded_once_per_run(tmp_path: Path, lenet: Path, monkeypatch) -> None:
    other = save_lenet(tmp_path / "other", seed=3)
    loads: list[str] = []
    real = models.load_with_meta

    def counting(source, *args, **kwargs):
        loads.append(str(source))
        return real(source, *args, **kwargs)

    monkeypatch.setattr(models, "load_with_meta", counting)
    run = write_run(tmp_path / "run.yaml", output="out", batch_size=2, data={"name": "mnist-sample", "num": 3},
                    models=[{"path": str(lenet)}, {"name": "other", "path": str(other)}],
                    attacks=[{"attack": "fgsm"}, {"attack": "jsma", "params": {"gamma": 0.05}}],
                    explanations=[{"explainer": "gradient"}, {"explainer": "occlusion", "params": {"patch": 7}}],
                    figures={"samples": 2})
    assert main(["evaluate", str(run), "--no-progress"]) == 0
    assert sorted(loads) == sorted([str(lenet), str(other)])


def test_robust_accuracy_is_the_per_sample_worst_case() -> None:
    def row(index, attack, before, after, label=1):
        return {"index": index, "attack": attack, "label": label, "pred_before": before, "pred_after": after}

    rows = [
        row(0, "a", 1, 1), row(0, "b", 1, 1), row(0, "b", 1, 1),  # robust to both (two targets of b)
        row(1, "a", 1, 1), row(1, "b", 1, 1), row(1, "b", 1, 4),  # one target of b wins
        row(2, "a", 1, 3), row(2, "b", 1, 1), row(2, "b", 1, 1),  # a wins
        row(3, "a", 2, 2), row(3, "b", 2, 2), row(3, "b", 2, 2),  # wrong before any attack
    ]
    assert robust_accuracy(rows) == pytest.approx(1 / 4)
    assert robust_accuracy([r for r in rows if r["attack"] == "a"]) == pytest.approx(2 / 4)


def test_summary_reports_robust_accuracy_first_and_means_say_what_they_average(tmp_path: Path, lenet: Path,
                                                                             ) -> None:
    run = write_run(tmp_path / "run.yaml", output="out", batch_size=4, data={"name": "mnist-sample", "num": 6},
                    models=[{"path": str(lenet)}], figures=False,
                    attacks=[{"attack": "fgsm", "params": {"eps": 0.05}}, {"attack": "fgsm", "name": "grid",
                                                                          "targets": "all", "params": {"eps": 0.3}}])
    assert main(["evaluate", str(run), "--no-progress"]) == 0
    rows = read_results(tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    by_hand = {}
    for r in rows:
        ok = r["pred_before"] == r["label"] and r["pred_after"] == r["label"]
        by_hand[r["index"]] = by_hand.get(r["index"], True) and ok
    assert summary["robustness"][0]["robust_accuracy"] == pytest.approx(sum(by_hand.values()) / 6)
    assert summary["models"][0]["robust_accuracy"] == summary["robustness"][0]["robust_accuracy"]
    first = [r for r in rows if r["attack"] == "fgsm(eps=0.05)"]
    won = [r["l2"] for r in first if r["success"]]
    entry = summary["results"][0]
    assert entry["l2_mean"] == pytest.approx(sum(r["l2"] for r in first) / len(first))
    assert entry["l2_mean_success"] == (pytest.approx(sum(won) / len(won)) if won else None)
    report = (tmp_path / "out" / "report.html").read_text()
    assert report.index("Robust accuracy") < report.index("<h2>Summary</h2>")


def test_save_adv_round_trip_is_bit_exact(tmp_path: Path, lenet: Path) -> None:
    run = write_run(tmp_path / "run.yaml", output="out", seed=2, batch_size=3, data={"name": "mnist-sample", "num": 5},
                    models=[{"path": str(lenet)}], figures=False, report=False, save_adversarial=True,
                    attacks=[{"attack": "fgsm", "params": {"eps": 0.2}},
                             {"attack": "fgsm", "name": "next", "targets": "next", "params": {"eps": 0.2}}])
    assert main(["evaluate", str(run), "--no-progress"]) == 0
    saved = load_adversarial(tmp_path / "out")
    assert set(saved) == {("lenet", "fgsm(eps=0.2)"), ("lenet", "next")}
    prep = prepare(load_config(run))
    x, y = prep.dataset.x, prep.dataset.y
    attack = FGSM(models.load(lenet), eps=0.2)
    by_hand = torch.cat([attack(x[i : i + 3], y=y[i : i + 3]).x_adv for i in range(0, 5, 3)])
    plain = saved[("lenet", "fgsm(eps=0.2)")]
    assert plain["x_adv"].dtype == torch.float32 and torch.equal(plain["x_adv"], by_hand)
    rows = [r for r in read_results(tmp_path / "out") if r["attack"] == "fgsm(eps=0.2)"]
    assert plain["index"].tolist() == [r["index"] for r in rows] == prep.indices.tolist()
    assert plain["label"].tolist() == y.tolist() and plain["target"].tolist() == [-1] * 5
    assert plain["success"].tolist() == [r["success"] for r in rows]
    assert saved[("lenet", "next")]["target"].tolist() == ((y + 1) % 10).tolist()
    assert list(load_adversarial(tmp_path / "out", attack="next")) == [("lenet", "next")]


def test_save_png_counts_the_examples_rounding_undoes(tmp_path: Path, lenet: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["evaluate", "--model", str(lenet), "--attack", "pgd:eps=0.02,steps=5", "-n", "8", "--batch-size", "4",
                 "--out", str(out), "--save-png", "--no-progress", "--no-report"]) == 0
    rows = read_results(out)
    model = models.load(lenet)
    pngs = sorted((out / "png").glob("*.png"))
    assert len(pngs) == 8
    lost = 0
    for r in rows:
        (path,) = [p for p in pngs if p.name.endswith(f"-{r['index']}.png")]
        image = np.asarray(Image.open(path), dtype=np.float32) / 255
        pred = int(model(torch.from_numpy(image)[None, None]).argmax())
        assert r["success_png"] == (r["success"] and pred != r["label"])
        lost += r["success"] and pred == r["label"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["results"][0]["png_lost"] == lost


def test_least_likely_targets_are_the_lowest_clean_logit(tmp_path: Path, lenet: Path) -> None:
    out = tmp_path / "ll"
    assert main(["evaluate", "--model", str(lenet), "--attack", "fgsm:eps=0.1", "--targets", "least-likely",
                 "-n", "4", "--out", str(out), "--no-progress", "--no-report"]) == 0
    rows = read_results(out)
    model = models.load(lenet)
    from salmap import data

    x, _ = data.load("mnist-sample", split="test")
    with torch.no_grad():
        expected = model(x[[r["index"] for r in rows]]).argmin(dim=1)
    assert [r["target"] for r in rows] == expected.tolist()
    attack_out = tmp_path / "attack"
    assert main(["attack", "fgsm", "--model", str(lenet), "--targeted", "least-likely", "-n", "4",
                 "--out", str(attack_out)]) == 0
    samples = json.loads((attack_out / "results.json").read_text())["samples"]
    assert [s["target"] for s in samples] == expected.tolist()


def test_accuracy_takes_labels_of_any_kind_and_refuses_a_shape_that_would_broadcast():
    from salmap.evaluation import accuracy

    logits = torch.tensor([[2.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    assert accuracy(logits, [0, 1, 1]) == accuracy(logits, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)
    masks = torch.zeros(2, 2, 3, 3)
    masks[:, 1, 0] = 1.0  # class 1 on the first row of pixels, class 0 elsewhere
    assert accuracy(masks, torch.zeros(2, 3, 3, dtype=torch.long)) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match=r"^labels must have shape \(3,\), one class index per sample of logits "
                                         r"\(3, 2\), got shape \(3, 1\)$"):
        accuracy(logits, torch.tensor([[0], [1], [1]]))  # (was 4/9 from a (3, 3) comparison)


def test_reading_a_run_that_is_not_there_names_the_folder(tmp_path):
    with pytest.raises(ValueError, match=r"run_dir '.*nowhere' is not a folder"):
        load_adversarial(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"out '.*nowhere' does not exist"):
        read_results(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"out '.*empty' holds no results.jsonl \(not a finished run\)"):
        read_results(tmp_path / "empty")
