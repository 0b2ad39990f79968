"""The bad-input matrix, evaluation side (group ``faults``): a corrupt or short unit file (rows,
kept examples, adversarial shard) is named and recomputed; a full disk leaves no hidden temporary files."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from _evaluate_support import rows_without_timing, save_lenet, write_run
from _faults import full_disk

from salmap.cli import main
from salmap.evaluation import load_adversarial
from salmap.evaluation import store as store_module
from salmap.evaluation.config import load_config
from salmap.evaluation.runner import evaluate


@pytest.fixture(scope="module")
def lenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_lenet(tmp_path_factory.mktemp("model") / "lenet")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def evaluate_recording(run: Path) -> tuple[Any, list[str]]:
    """``evaluate`` the run file again, with the warnings it logged."""
    records = _Records()
    logging.getLogger("salmap").addHandler(records)
    try:
        return evaluate(load_config(run), progress=False), records.messages
    finally:
        logging.getLogger("salmap").removeHandler(records)


DAMAGE = {  # what each of the four units suffers, and the warning that must name it
    "truncated": (lambda text: text[: len(text) // 2], "not valid JSON"),     # cut inside a line
    "short": (lambda text: text.splitlines(keepends=True)[0], "holds 1 rows, expected 3"),  # a line lost
    "garbage": (lambda text: "\x00\xff" + text, "not valid JSON"),
    "not-rows": (lambda text: "5\n" * 3, "must be a JSON object"),
}


def test_faults_corrupt_units_are_named_and_recomputed(tmp_path, lenet):
    run = write_run(tmp_path / "run.yaml", output="out", seed=0, batch_size=3, data={"name": "mnist-sample", "num": 12},
                    models=[{"name": "m", "path": str(lenet)}], attacks=[{"attack": "fgsm", "params": {"eps": 0.2}}],
                    figures=False, report=False)
    first = evaluate(load_config(run), progress=False)
    expected = rows_without_timing(first.output)
    units = sorted((first.output / "batches").glob("*.jsonl"))
    assert len(units) == len(DAMAGE) == 4
    for unit, (damage, _) in zip(units, DAMAGE.values(), strict=True):
        unit.write_bytes(damage(unit.read_text()).encode("utf-8", "surrogateescape"))
    (first.output / "results.jsonl").unlink()
    again, messages = evaluate_recording(run)
    for unit, (_, message) in zip(units, DAMAGE.values(), strict=True):
        warned = [m for m in messages if unit.name in m]
        assert len(warned) == 1 and message in warned[0] and "recomputing" in warned[0], (unit.name, messages)
        assert [json.loads(line) for line in unit.read_text().splitlines()]  # rewritten whole
    assert again.computed == 4
    assert rows_without_timing(again.output) == expected


def test_faults_damaged_tensor_files_are_named_and_recomputed(tmp_path, lenet):
    """A unit's examples file and adversarial shard cut short (or the shard lost): a warning names
    the file and the unit is recomputed, as a damaged rows file is; never SafetensorError unnamed."""
    run = write_run(tmp_path / "run.yaml", output="out", seed=0, batch_size=4, data={"name": "mnist-sample", "num": 12},
                    models=[{"name": "m", "path": str(lenet)}], attacks=[{"attack": "fgsm", "params": {"eps": 0.2}}],
                    save_adversarial=True, report=False)
    first = evaluate(load_config(run), progress=False)
    expected, saved = rows_without_timing(first.output), load_adversarial(first.output)
    examples = sorted((first.output / "batches").glob("*.examples.safetensors"))
    shards = sorted((first.output / "adversarial").glob("*.safetensors"))
    assert examples and len(shards) == 3
    damaged = [examples[0], shards[1], shards[2]]
    for path in damaged[:2]:
        path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"adversarial examples file {shards[1]} could not be read"):
        load_adversarial(first.output)
    shards[2].unlink()
    again, messages = evaluate_recording(run)
    for path, message in zip(damaged, ["could not be read", "could not be read", "is missing"], strict=True):
        warned = [m for m in messages if str(path) in m]
        assert len(warned) == 1 and message in warned[0] and "recomputing" in warned[0], (path, messages)
    assert again.computed == 3 and rows_without_timing(again.output) == expected
    assert all(load_adversarial(again.output)[key][k].equal(v[k]) for key, v in saved.items() for k in v)


@pytest.mark.parametrize("lost", [False, True], ids=["truncated", "lost"])
def test_faults_cli_resume_with_damaged_examples_recomputes(tmp_path, lenet, caplog, lost):
    """``salmap attack`` resumed with its figure samples' examples file cut short or lost (was
    SafetensorError naming no file, or KeyError: 'position')."""
    argv = ["attack", "fgsm", "--model", str(lenet), "-n", "6", "--eps", "0.3", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    (path,) = (tmp_path / "o" / "batches").glob("*.examples.safetensors")
    path.unlink() if lost else path.write_bytes(path.read_bytes()[:100])
    assert main(argv) == 0
    assert f"{path} {'is missing' if lost else 'could not be read'}" in caplog.text
    assert "recomputing the unit" in caplog.text and len(path.read_bytes()) > 100


def test_faults_a_lost_explanation_maps_file_is_named_and_recomputed(tmp_path, lenet, caplog):
    """``salmap evaluate``'s explanation units always keep their maps (the figures'): one lost is
    named and its unit recomputed, and the figure is there again (it was resumed without it)."""
    run = write_run(tmp_path / "run.yaml", output="out", seed=0, batch_size=3, data={"name": "mnist-sample", "num": 6},
                    models=[{"name": "m", "path": str(lenet)}], explanations=[{"explainer": "gradient"}], report=False)
    first = evaluate(load_config(run), progress=False)
    (path,) = (first.output / "batches").glob("*-e000-*.examples.safetensors")
    path.unlink()
    again = evaluate(load_config(run), progress=False)
    assert f"{path} is missing" in caplog.text and "recomputing the unit" in caplog.text
    assert again.computed == 1 and path.is_file()
    assert json.loads((again.output / "summary.json").read_text())["explanations"][0]["figure"]


def test_faults_full_disk_leaves_no_temporary_file(tmp_path):
    with full_disk(), pytest.raises(OSError):
        store_module.atomic_write(tmp_path / "results.jsonl", b"x" * 100)
    assert list(tmp_path.iterdir()) == []
