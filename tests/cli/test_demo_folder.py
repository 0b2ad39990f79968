"""``salmap demo --out DIR`` replaces its own earlier runs under DIR, never another salmap run that
sits where the demo's would go (before, it replaced it without ``--overwrite``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from _evaluate_support import save_lenet

from salmap.cli import demo, main


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_demo_refuses_another_run_where_its_evaluation_goes_before_any_work(tmp_path: Path, capsys,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    lenet = save_lenet(tmp_path / "lenet")
    theirs = tmp_path / "d" / "evaluation"
    assert main(["evaluate", "--model", str(lenet), "--attack", "fgsm:eps=0.1", "-n", "4", "--no-progress",
                 "--out", str(theirs)]) == 0
    before = digest(theirs)
    capsys.readouterr()
    monkeypatch.setattr(demo, "cached_lenet", lambda *a, **k: pytest.fail("the demo began"))
    assert main(["demo", "--out", str(tmp_path / "d"), "-n", "2", "--seg-num", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {tmp_path / 'd'} holds another salmap run in evaluation/" in err
    assert digest(theirs) == before and sorted(p.name for p in (tmp_path / "d").iterdir()) == ["evaluation"]


def test_an_earlier_demo_s_run_is_the_demo_s_to_replace(tmp_path: Path) -> None:
    for sub, name in (("evaluation", demo.MAIN_NAME), ("segmentation", demo.SEG_NAME)):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "run.json").write_text(json.dumps({"settings": {"name": name}}))
        demo.check_not_another_run(tmp_path / sub, name)  # (no error)
    (tmp_path / "segmentation" / "run.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"holds another salmap run in segmentation/ \(None, not the demo's\)"):
        demo.check_not_another_run(tmp_path / "segmentation", demo.SEG_NAME)
