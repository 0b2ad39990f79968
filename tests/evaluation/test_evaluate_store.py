"""The run folder: a lock naming its holder (stale locks taken over) and an --overwrite that
deletes only what salmap wrote."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from _evaluate_support import PYTHON, save_lenet, subprocess_env, write_run

from salmap.cli import main
from salmap.evaluation.lock import LOCK_FILE, FolderLock, FolderLocked
from salmap.evaluation.store import RunStore


@pytest.fixture(scope="module")
def lenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_lenet(tmp_path_factory.mktemp("model") / "lenet")


def _run(tmp_path: Path, lenet: Path, output: str = "out") -> Path:
    return write_run(tmp_path / "run.yaml", output=output, batch_size=2, data={"name": "mnist-sample", "num": 2},
                     models=[{"path": str(lenet)}], attacks=[{"attack": "fgsm", "params": {"eps": 0.1}}],
                     figures=False, report=False)


def test_a_second_run_on_a_locked_folder_names_the_holder(tmp_path: Path, lenet: Path, capsys) -> None:
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [PYTHON, "-c", "import sys, time; from salmap.evaluation.lock import FolderLock; "
         f"FolderLock({str(out)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
        env=subprocess_env(), stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        code = main(["evaluate", str(_run(tmp_path, lenet)), "--no-progress"])
        err = capsys.readouterr().err
        assert code != 0
        assert f"pid {holder.pid}" in err and "in use by another salmap run" in err
        assert not (out / "run.json").exists()  # the second run wrote nothing
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed (its lock released by the kernel): the folder is free again
    assert main(["evaluate", str(_run(tmp_path, lenet)), "--no-progress"]) == 0


def test_a_stale_lock_of_a_killed_process_is_taken_over(tmp_path: Path, lenet: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([PYTHON, "-c", "pass"])
    dead.wait()
    (out / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started": time.time()}))
    assert main(["evaluate", str(_run(tmp_path, lenet)), "--no-progress"]) == 0
    assert (out / "results.jsonl").is_file()


def test_lock_in_process_and_release(tmp_path: Path) -> None:
    first = FolderLock(tmp_path).acquire()
    with pytest.raises(FolderLocked, match=f"pid {os.getpid()}"):
        FolderLock(tmp_path).acquire()
    first.release()
    with FolderLock(tmp_path):
        pass


def test_the_lock_file_is_removed_on_release_and_a_replaced_one_is_not_the_folder_s(tmp_path: Path) -> None:
    """The holder removes ``.salmap.lock`` as it releases the lock; a lock taken on a file that was
    removed or replaced meanwhile does not lock the folder (the next acquirer takes the new file),
    and its release leaves the new file alone."""
    with FolderLock(tmp_path):
        assert (tmp_path / LOCK_FILE).is_file()
    assert not (tmp_path / LOCK_FILE).exists()
    old = FolderLock(tmp_path).acquire()
    (tmp_path / LOCK_FILE).unlink()  # (as its release does, seen by a process that opened it before)
    new = FolderLock(tmp_path).acquire()  # the file at the path now: not locked by the old holder
    old.release()
    assert (tmp_path / LOCK_FILE).is_file()  # (not the old holder's to remove)
    with pytest.raises(FolderLocked):
        FolderLock(tmp_path).acquire()
    new.release()
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_refused_run_leaves_nothing_in_the_user_s_folder(tmp_path: Path, lenet: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["evaluate", str(_run(tmp_path, lenet)), "--no-progress"]) == 2
    assert "is not empty and holds no salmap run (notes.txt)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # (no .salmap.lock left behind)


def test_overwrite_refuses_a_folder_salmap_did_not_write(tmp_path: Path, lenet: Path, capsys) -> None:
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    mine = {"report.html": "my report", "results.jsonl": "my rows", "summary.json": "{}",
            "figures/plot.png": "png", "notes.txt": "keep"}
    for name, text in mine.items():
        (out / name).write_text(text)
    assert main(["evaluate", str(_run(tmp_path, lenet)), "--no-progress"]) != 0
    assert "not empty and holds no salmap run" in capsys.readouterr().err
    assert main(["evaluate", str(_run(tmp_path, lenet)), "--no-progress", "--overwrite"]) != 0
    assert "--overwrite deletes only a run salmap wrote" in capsys.readouterr().err
    for name, text in mine.items():  # nothing of the user's was deleted
        assert (out / name).read_text() == text


def test_overwrite_replaces_only_salmaps_files_of_a_recognised_run(tmp_path: Path, lenet: Path, capsys) -> None:
    run = _run(tmp_path, lenet)
    assert main(["evaluate", str(run), "--no-progress"]) == 0
    out = tmp_path / "out"
    other = write_run(tmp_path / "other.yaml", output="out", batch_size=2, data={"name": "mnist-sample", "num": 3},
                      models=[{"path": str(lenet)}], attacks=[{"attack": "fgsm", "params": {"eps": 0.1}}],
                      figures=False, report=False)
    assert main(["evaluate", str(other), "--no-progress"]) != 0
    assert "holds a different run" in capsys.readouterr().err
    (out / "batches" / "my-notes.txt").write_text("mine")
    (out / "thesis.tex").write_text("precious")
    assert main(["evaluate", str(other), "--no-progress", "--overwrite"]) == 0
    assert len((out / "results.jsonl").read_text().splitlines()) == 3
    assert (out / "batches" / "my-notes.txt").read_text() == "mine" and (out / "thesis.tex").read_text() == "precious"
    assert json.loads((out / "run.json").read_text())["settings"]["data"]["num"] == 3


def test_store_names_what_it_owns(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    (tmp_path / "batches").mkdir()
    (tmp_path / "batches" / "m000-a000-b000000.jsonl").write_text("")
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "m00-a00-grid.png").write_text("")
    (tmp_path / "figures" / "holiday.png").write_text("")
    assert store.foreign_files() == ["figures/holiday.png"]


def test_overwriting_a_defend_run_by_another_command_keeps_the_defended_model(tmp_path: Path) -> None:
    """``salmap attack --model runs/dae --out runs/dae --overwrite`` must not delete the model it attacks:
    salmap defend's checkpoint is replaced only by salmap defend."""
    checkpoint = ("model.json", "weights.safetensors", "evaluation.json", "training.json")
    with RunStore(tmp_path, "defend") as store:
        store.claim("f" * 16, {"defense": "dae"}, overwrite=False)
        for name in checkpoint:
            (tmp_path / name).write_text("trained")
    with RunStore(tmp_path, "attack") as store:
        assert store.claim("a" * 16, {"attack": "fgsm"}, overwrite=True) is False
    assert all((tmp_path / name).read_text() == "trained" for name in checkpoint)
    assert json.loads((tmp_path / "run.json").read_text())["command"] == "attack"
    with RunStore(tmp_path, "defend") as store:  # a defend run replaces it
        store.claim("d" * 16, {"defense": "dae"}, overwrite=True)
    assert not any((tmp_path / name).exists() for name in checkpoint)
