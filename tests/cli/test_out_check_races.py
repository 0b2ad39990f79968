"""The output folder's check when another process (another rank of the same ``torchrun`` run)
makes the same folder at the same time: found when ``salmap evaluate`` under ``torchrun`` failed
once in CI with "output ... cannot be created: File exists"."""

from __future__ import annotations

from pathlib import Path

import pytest

from salmap.cli.checks import check_output_path


def test_a_folder_made_meanwhile_by_another_process_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run" / "two"
    original = Path.mkdir

    def other_first(self: Path, *args: object, **kwargs: object) -> None:
        original(self, parents=True, exist_ok=True)  # (the other rank's check got there first)
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", other_first)
    assert check_output_path(out, "output") == out
    monkeypatch.undo()
    assert out.is_dir()  # (the other process's folder is left to it)


def test_a_folder_written_into_meanwhile_is_left_as_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run" / "two"
    original = Path.rmdir

    def written_first(self: Path) -> None:
        if self == out:
            (out / "lock").write_text("the other rank's")
        original(self)

    monkeypatch.setattr(Path, "rmdir", written_first)
    assert check_output_path(out, "output") == out
    monkeypatch.undo()
    assert (out / "lock").read_text() == "the other rank's"


def test_a_folder_that_cannot_be_made_still_fails_in_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="cannot be created"):
        check_output_path(blocker / "sub", "output")
