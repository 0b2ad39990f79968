"""The runner: rows equal to running the attacks by hand, schema, targeting, and resume after kill -9."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from _evaluate_support import PYTHON, rows_without_timing, save_lenet, subprocess_env, write_run

from salmap import models
from salmap.attacks import FGSM, all_other_targets
from salmap.cli import main
from salmap.evaluation.config import load_config
from salmap.evaluation.runner import ROW_FIELDS, SCHEMA_VERSION, evaluate, prepare, read_results


@pytest.fixture(scope="module")
def lenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_lenet(tmp_path_factory.mktemp("model") / "lenet")


def test_rows_equal_the_attacks_run_by_hand(tmp_path: Path, lenet: Path) -> None:
    run = write_run(
        tmp_path / "run.yaml", output="out", seed=3, batch_size=3, data={"name": "mnist-sample", "num": 7},
        models=[{"name": "plain", "path": str(lenet)}, {"name": "defended", "path": str(lenet), "defense": "none-really"}],
        attacks=[{"attack": "fgsm", "params": {"eps": 0.25}},
                 {"attack": "fgsm", "name": "fgsm-next", "targets": "next", "params": {"eps": 0.25}},
                 {"attack": "fgsm", "name": "fgsm-grid", "targets": "all", "params": {"eps": 0.25}}],
        figures=False, report=False,
    )
    cfg = load_config(run)
    outcome = evaluate(cfg, progress=False)
    rows = read_results(outcome.output)
    assert all(tuple(r) == ROW_FIELDS for r in rows)
    assert len(rows) == 2 * (7 + 7 + 7 * 9)

    prep = prepare(cfg)
    # a seeded random choice of 7 distinct test images, reported by their dataset index
    indices = [r["index"] for r in rows[:7]]
    assert len(set(indices)) == 7 and indices != list(range(7))
    assert torch.equal(prep.indices, torch.tensor(indices))
    model = models.load(lenet)
    x, y = prep.dataset.x, prep.dataset.y
    attack = FGSM(model, eps=0.25)
    by_hand = [attack(x[i : i + 3], y=y[i : i + 3]) for i in range(0, 7, 3)]
    l2 = torch.cat([r.l2 for r in by_hand])
    after = torch.cat([r.pred_after for r in by_hand])
    plain = [r for r in rows if r["model"] == "plain" and r["attack"] == "fgsm(eps=0.25)"]
    assert [r["l2"] for r in plain] == pytest.approx(l2.tolist(), abs=1e-6)
    assert [r["pred_after"] for r in plain] == after.tolist()
    assert [r["label"] for r in plain] == y.tolist() and all(r["target"] is None for r in plain)

    nxt = [r for r in rows if r["model"] == "plain" and r["attack"] == "fgsm-next"]
    assert [r["target"] for r in nxt] == ((y + 1) % 10).tolist()
    grid = [r for r in rows if r["model"] == "plain" and r["attack"] == "fgsm-grid"]
    _, y_rep, targets = all_other_targets(x, y, 10)
    assert [r["target"] for r in grid] == targets.tolist() and [r["label"] for r in grid] == y_rep.tolist()
    for r in grid + nxt:  # a sample already predicted as its target is not attacked: success at no cost
        if r["pred_before"] == r["target"]:
            assert r["success"] and r["l0"] == 0 and r["iterations"] == 0

    summary = json.loads((outcome.output / "summary.json").read_text())
    assert summary["schema_version"] == SCHEMA_VERSION
    entry = summary["results"][0]
    assert (entry["model"], entry["attack"], entry["rows"], entry["samples"]) == ("plain", "fgsm(eps=0.25)", 7, 7)
    won = [r for r in plain if r["success"]]
    assert entry["success_rate"] == pytest.approx(len(won) / 7)
    assert entry["clean_accuracy"] == pytest.approx(sum(r["pred_before"] == r["label"] for r in plain) / 7)
    assert entry["adversarial_accuracy"] == pytest.approx(sum(r["pred_after"] == r["label"] for r in plain) / 7)
    assert entry["linf_mean"] == pytest.approx(0.25, abs=1e-6)  # every row, successful or not
    assert entry["l2_mean"] == pytest.approx(sum(r["l2"] for r in plain) / 7)
    if won:
        assert entry["linf_mean_success"] == pytest.approx(0.25, abs=1e-6)
        assert entry["l2_mean_success"] == pytest.approx(sum(r["l2"] for r in won) / len(won))
    assert summary["results"][3]["defense"] == "none-really"
    assert set(summary["timings"]) >= {"wall_seconds", "compute_seconds", "units", "units_resumed", "processes"}


def test_kill_9_mid_run_then_resume_equals_an_uninterrupted_run(tmp_path: Path, lenet: Path) -> None:
    settings = dict(
        seed=1, batch_size=4, data={"name": "mnist-sample", "num": 24}, models=[{"path": str(lenet)}],
        attacks=[{"attack": "pgd", "params": {"eps": 0.05, "step": 0.002, "steps": 120}}],
        figures=False, report=False,
    )
    run = write_run(tmp_path / "run.yaml", output="killed", **settings)
    out = tmp_path / "killed"
    proc = subprocess.Popen([PYTHON, "-m", "salmap", "evaluate", str(run), "--no-progress"],
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not list((out / "batches").glob("*.jsonl")):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "no batch finished in time"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "results.jsonl").exists()
    finished = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (out / "batches").glob("*.jsonl")}
    assert 1 <= len(finished) < 6
    # a write the crash interrupted: half a row under a temporary name
    (out / "batches" / ".m000-a000-b000005.jsonl.tmp-4242").write_text('{"model": "lenet", "ind')

    run2 = write_run(tmp_path / "run.yaml", output="killed", **settings)
    assert main(["evaluate", str(run2), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["timings"]["units_resumed"] == len(finished)
    for path, (content, mtime) in finished.items():  # finished batches were not computed again
        assert path.read_bytes() == content and path.stat().st_mtime_ns == mtime
    assert not list((out / "batches").glob(".*tmp*"))

    whole = write_run(tmp_path / "whole.yaml", output="whole", **settings)
    assert main(["evaluate", str(whole), "--no-progress"]) == 0
    resumed_rows = rows_without_timing(out)
    assert len(resumed_rows) == 24 and len({r["index"] for r in resumed_rows}) == 24
    assert resumed_rows == rows_without_timing(tmp_path / "whole")


def test_segmentation_attack_rows_carry_pixel_accuracy(tmp_path: Path) -> None:
    torch.manual_seed(0)
    unet = models.save(models.build("unet", in_channels=1, num_classes=2, base=4, depth=2), tmp_path / "unet",
                       {"bounds": [0.0, 1.0]})
    run = write_run(
        tmp_path / "run.yaml", output="out", batch_size=2, data={"name": "mnist-seg", "num": 3},
        models=[{"path": str(unet)}], figures={"samples": 2}, report=False,
        attacks=[{"attack": "jsma-seg", "params": {"gamma": 0.01, "candidates": 20, "max_iterations": 2}},
                 {"attack": "jsma-seg", "targets": "add", "params": {"gamma": 0.01, "candidates": 20, "max_iterations": 2}}],
    )
    outcome = evaluate(load_config(run), progress=False)
    rows = read_results(outcome.output)
    assert [r["target"] for r in rows] == ["hide"] * 3 + ["add"] * 3
    for r in rows:
        assert r["label"] is None and r["pred_before"] is None
        assert 0.0 <= r["pixel_accuracy"] <= 1.0 and r["iterations"] <= 2 and r["l0"] <= 0.01 * 64 * 64
        assert r["success"] == (r["pixel_accuracy"] >= 0.99)
    entry = outcome.summary["results"][0] if outcome.summary else {}
    assert entry["clean_accuracy"] is None or entry["clean_accuracy"] != entry["clean_accuracy"]
    assert entry["pixel_accuracy_mean"] == pytest.approx(sum(r["pixel_accuracy"] for r in rows[:3]) / 3)
    assert (outcome.output / "figures" / "m00-a00-grid.png").is_file()


def test_bad_config_for_the_dataset_task(tmp_path: Path, lenet: Path) -> None:
    run = write_run(tmp_path / "run.yaml", output="out", data={"name": "mnist-sample", "num": 2},
                    models=[{"path": str(lenet)}], attacks=[{"attack": "jsma-seg"}])
    with pytest.raises(ValueError, match=r"attacks\[0\].attack: jsma-seg attacks segmentation models"):
        load_config(run)
