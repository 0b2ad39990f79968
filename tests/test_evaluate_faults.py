"""The bad-input matrix, evaluation side (group ``faults``): a corrupt or short unit file is
named and recomputed; a full disk leaves no hidden temporary files."""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path

import pytest
from _evaluate_support import rows_without_timing, save_lenet, write_run

from salmap.evaluation import store as store_module
from salmap.evaluation.config import load_config
from salmap.evaluation.runner import evaluate


@pytest.fixture(scope="module")
def lenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_lenet(tmp_path_factory.mktemp("model") / "lenet")


def _run(tmp_path: Path, lenet: Path) -> Path:
    return write_run(tmp_path / "run.yaml", output="out", seed=0, batch_size=3, data={"name": "mnist-sample", "num": 6},
                     models=[{"name": "m", "path": str(lenet)}], attacks=[{"attack": "fgsm", "params": {"eps": 0.2}}],
                     figures=False, report=False)


@pytest.mark.parametrize("damage, message", [
    (lambda text: text[: len(text) // 2], "not valid JSON"),                      # cut inside a line
    (lambda text: text.splitlines(keepends=True)[0], "holds 1 rows, expected 3"),  # a line lost
    (lambda text: "\x00\xff" + text, "not valid JSON"),                            # garbage
    (lambda text: "5\n" * 3, "must be a JSON object"),
], ids=["faults-unit-truncated", "faults-unit-short", "faults-unit-garbage", "faults-unit-not-rows"])
def test_faults_corrupt_unit_is_named_and_recomputed(tmp_path, lenet, caplog, damage, message):
    cfg = load_config(_run(tmp_path, lenet))
    first = evaluate(cfg, progress=False)
    expected = rows_without_timing(first.output)
    units = sorted((first.output / "batches").glob("*.jsonl"))
    if not units:
        pytest.skip("the runner removes unit files after a finished run")
    victim = units[0]
    victim.write_bytes(damage(victim.read_text()).encode("utf-8", "surrogateescape"))
    (first.output / "results.jsonl").unlink()
    with caplog.at_level(logging.WARNING, logger="salmap"):
        again = evaluate(load_config(_run(tmp_path, lenet)), progress=False)
    warned = [r.getMessage() for r in caplog.records if victim.name in r.getMessage()]
    assert warned and message in warned[0] and "recomputing" in warned[0]
    assert again.computed == 1
    assert rows_without_timing(again.output) == expected
    assert len(victim.read_text().splitlines()) == 3 and all(json.loads(x) for x in victim.read_text().splitlines())


def test_faults_full_disk_leaves_no_temporary_file(tmp_path, monkeypatch):
    real_open = open

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(data[:5])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("builtins.open", lambda p, mode="r", *a, **k: Full(real_open(p, mode, *a, **k))
                        if "w" in mode else real_open(p, mode, *a, **k))
    with pytest.raises(OSError):
        store_module.atomic_write(tmp_path / "results.jsonl", b"x" * 100)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
