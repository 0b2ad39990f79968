"""A refused value is named by the flag that gave it: ``-n`` (not ``--num``) in every command that takes
it, and ``salmap evaluate``'s ``--output-key`` (was reported under ``--model (models[0].path)``)."""

from __future__ import annotations

import pytest
from conftest import error_line

from salmap.cli import main

N_COMMANDS = {
    "attack": ["attack", "fgsm", "--model", "{lenet}"],
    "attack-seg": ["attack", "jsma-seg", "--model", "{lenet}"],
    "explain": ["explain", "--model", "{lenet}"],
    "evaluate": ["evaluate", "--model", "{lenet}", "--attack", "fgsm"],
    "demo": ["demo"],
    "defend-dae": ["defend", "dae", "--model", "{lenet}"],
    "defend-block-switch": ["defend", "block-switch", "--model", "{lenet}"],
    "defend-adv-train": ["defend", "adv-train", "--model", "{lenet}"],
}


@pytest.mark.parametrize("name", list(N_COMMANDS))
@pytest.mark.parametrize("value", ["0", "-3"])
def test_a_count_that_is_not_positive_is_named_n(tmp_path, lenet28, capsys, name, value):
    argv = [a.format(lenet=lenet28) for a in N_COMMANDS[name]]
    for flag in ("-n", "--num"):  # (one option: named as its help names it first)
        assert main([*argv, flag, value, "--out", str(tmp_path / "o")]) == 2
        assert error_line(capsys, argv[0]).endswith(f"error: -n must be positive, got {value}\n")
        assert not (tmp_path / "o").exists()


def test_evaluate_names_a_bad_output_key_by_its_flag(tmp_path, lenet28, capsys):
    out = tmp_path / "o"
    argv = ["evaluate", "--model", lenet28, "--output-key", "nope", "--attack", "fgsm", "-n", "2", "--out", str(out)]
    assert main(argv) == 2
    err = error_line(capsys, "evaluate")
    assert ("error: flags has 1 problem: --output-key (models[0].output_key): output_key='nope' names an entry, "
            "but the model returned a plain tensor\n") in err, err
    assert "--model" not in err and not out.exists()
    # a run file's own output_key: named by its key path
    (tmp_path / "run.yaml").write_text(
        f"output: {out}\ndata: {{name: mnist-sample, num: 2}}\n"
        f"models: [{{path: {lenet28}, output_key: nope}}]\nattacks: [{{attack: fgsm}}]\n")
    assert main(["evaluate", str(tmp_path / "run.yaml")]) == 2
    assert "models[0].output_key: output_key='nope' names an entry" in error_line(capsys, "evaluate")
    assert not out.exists()
    # the path itself still names --model
    assert main(["evaluate", "--model", str(tmp_path / "missing"), "--attack", "fgsm", "--out", str(out)]) == 2
    assert "--model (models[0].path)" in error_line(capsys, "evaluate")
