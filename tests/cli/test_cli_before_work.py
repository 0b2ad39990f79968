"""User-facing checks of the command line that must hold before any work: a wrong argument is one
line naming the flag, the value and why, found before the output folder is made; a request the
data cannot meet is said, never silently changed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from salmap import models
from salmap.cli import main


def _error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"salmap {command}: error: "), err
    assert "Traceback" not in err
    return err


@pytest.fixture
def lenet28(tmp_path):
    folder = tmp_path / "lenet"
    models.save(models.build("lenet"), folder, {"bounds": [0.0, 1.0], "input_shape": [1, 28, 28],
                                                "class_names": [str(i) for i in range(10)]})
    return str(folder)


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
    from salmap.cli.common import check_output_path

    assert check_output_path(tmp_path / "new" / "deep") == tmp_path / "new" / "deep"
    assert not (tmp_path / "new").exists()
