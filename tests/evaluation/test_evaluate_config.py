"""Run descriptions: every problem reported with its key path before any work; bad input refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from _evaluate_support import save_lenet, write_run

from salmap.cli import main
from salmap.cli.evaluate import parse_attack
from salmap.evaluation.config import ConfigError, load_config, parse_config


@pytest.fixture(scope="module")
def lenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_lenet(tmp_path_factory.mktemp("model") / "lenet")


def base(lenet: Path, out: Path) -> dict:
    return {
        "output": str(out), "batch_size": 4, "data": {"name": "mnist-sample", "num": 8},
        "models": [{"name": "lenet", "path": str(lenet)}],
        "attacks": [{"attack": "fgsm", "params": {"eps": 0.2}}],
    }


def test_a_file_with_several_mistakes_reports_all_with_key_paths(tmp_path: Path, lenet: Path) -> None:
    run = write_run(
        tmp_path / "run.yaml",
        nmae="typo", seed=-3, batch_size=0, output=str(tmp_path / "out"),
        data={"name": "mnist-sample", "num": 5000, "splt": "test"},
        models=[{"name": "a", "path": str(lenet)}, {"name": "a", "path": str(tmp_path / "missing")}],
        attacks=[
            {"attack": "fgsm", "params": {"epss": 0.1}},
            {"attack": "fgsm", "params": {"eps": -1.0}},
            {"attack": "pgd", "targets": "sideways"},
            {"attack": "nope"},
            {"attack": "fgsm", "params": {"loss_fn": "mse"}},
        ],
        explanations=[{"explainer": "gradient", "params": {"absolut": True}}],
    )
    with pytest.raises(ConfigError) as info:
        load_config(run)
    paths = [p for p, _ in info.value.problems]
    assert paths == [
        "nmae", "seed", "batch_size", "data.splt", "models[1].name",
        "attacks[0].params.epss", "attacks[1].params.eps", "attacks[2].targets", "attacks[3].attack",
        "attacks[4].params.loss_fn", "explanations[0].params.absolut", "data.num", "models[1].path",
    ]
    text = str(info.value)
    assert "13 problems" in text
    assert "attacks[0].params.epss: unknown parameter of FGSM (did you mean 'eps'?)" in text
    assert "attacks[1].params.eps: eps must be in [0, inf), got -1.0" in text
    assert "attacks[3].attack: must be one of bim, fgsm," in text
    assert "attacks[4].params.loss_fn: takes a Python object and cannot be set from a run file" in text
    assert "data.num: asks for 5000 samples but mnist-sample (test) holds only 1000" in text
    assert "nmae: unknown key (did you mean 'name'?)" in text


def test_missing_sections_and_wrong_types(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"models": "lenet", "attacks": [], "data": [1], "figures": {"samples": "many"}})
    problems = dict(info.value.problems)
    assert set(problems) == {"output", "models", "attacks", "data", "figures.samples"}
    assert "must be a list" in problems["models"]
    assert "at least one" in problems["attacks"]
    with pytest.raises(ConfigError, match="<top>: must be a mapping"):
        parse_config(["not", "a", "mapping"])


def test_valid_file_resolves_relative_paths(tmp_path: Path, lenet: Path) -> None:
    (tmp_path / "m").symlink_to(lenet)
    run = write_run(tmp_path / "run.yaml", output="out", models=[{"path": "m"}],
                    attacks=[{"attack": "pgd", "params": {"eps": 0.1, "steps": 2}}])
    cfg = load_config(run)
    assert cfg.output == str(tmp_path / "out")
    assert cfg.models[0].path == str(tmp_path / "m") and cfg.models[0].name == "m"
    assert cfg.attacks[0].name == "pgd(eps=0.1,steps=2)" and cfg.attacks[0].targets == "none"
    assert cfg.data.select == "random" and cfg.seed == 0
    # the fingerprint follows what changes results, not where they are written
    other = load_config(run, {"output": "elsewhere"})
    assert other.fingerprint() == cfg.fingerprint()
    assert load_config(run, {"seed": 1}).fingerprint() != cfg.fingerprint()


def test_parse_attack_flag() -> None:
    assert parse_attack("pgd:eps=0.1,steps=3,random_start=false") == {
        "attack": "pgd", "params": {"eps": "0.1", "steps": "3", "random_start": "false"}}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_attack("fgsm:0.1")


def test_cli_reports_every_problem_and_does_no_work(tmp_path: Path, lenet: Path, capsys) -> None:
    run = write_run(tmp_path / "run.yaml", output=str(tmp_path / "out"), models=[{"path": str(lenet)}],
                    attacks=[{"attack": "fgsm", "params": {"eps": 0.1, "bogus": 1}}], data={"num": 0})
    assert main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err
    assert "attacks[0].params.bogus: unknown parameter" in err
    assert "data.num: must be at least 1, got 0" in err
    assert not (tmp_path / "out").exists()


def test_foreign_output_folder_is_refused_unless_overwrite(tmp_path: Path, lenet: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    run = write_run(tmp_path / "run.yaml", **base(lenet, out), figures=False, report=False)
    assert main(["evaluate", str(run), "--no-progress"]) == 2
    assert "not empty and holds no salmap run" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--no-progress", "--overwrite"]) == 0
    assert (out / "thesis.tex").read_text() == "precious"  # overwrite removes only what the runner owns
    assert (out / "summary.json").is_file()

    # the same folder, a different run: refused; the first run's results are untouched
    before = (out / "results.jsonl").read_text()
    assert main(["evaluate", str(run), "--no-progress", "--seed", "5"]) == 2
    assert "holds a different run" in capsys.readouterr().err
    assert (out / "results.jsonl").read_text() == before
    # the same run again: nothing to compute, same results
    assert main(["evaluate", str(run), "--no-progress"]) == 0
    assert "2 batches resumed" in capsys.readouterr().out
    assert (out / "results.jsonl").read_text().count("\n") == before.count("\n")


def test_flags_alone_describe_a_run(tmp_path: Path, lenet: Path) -> None:
    out = tmp_path / "flags"
    code = main(["evaluate", "--model", str(lenet), "--attack", "fgsm:eps=0.3", "--attack", "pgd:eps=0.1,steps=2",
                 "--num", "6", "--batch-size", "3", "--out", str(out), "--no-progress", "--no-report"])
    assert code == 0
    assert (out / "results.jsonl").read_text().count("\n") == 12
    assert not (out / "report.html").exists()
