"""A run file is untrusted input: its size, kind and encoding are checked before it is parsed, and
a value it gives is rendered short in an error (a YAML alias bomb: ten million references to one
list in a 600-byte file)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from _evaluate_support import save_lenet

from salmap import models
from salmap._repr import short
from salmap.cli import main
from salmap.evaluation.config import RUN_FILE_LIMIT, read_run_file

# eight levels of ten aliases of the level below: 10**7 references to ['lol'] once parsed
ALIAS_BOMB = "[&a0 ['lol'], " + ", ".join(f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 8)) + "]"


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize(("content", "expected"), [
    (b"\xff\xfe\x00garbage", "is not UTF-8 text (byte 0)"),
    (b"x: 1\n" + b"#" * RUN_FILE_LIMIT, f"is larger than {RUN_FILE_LIMIT // 2**20} MiB"),
])
def test_a_run_file_that_is_not_a_page_of_yaml_text_is_refused_in_one_line(tmp_path: Path, capsys, content: bytes,
                                                                            expected: str) -> None:
    path = tmp_path / "run.yaml"
    path.write_bytes(content)
    err = one_line_error(capsys, ["evaluate", str(path)])
    assert f"run file '{path}' {expected}" in err


def test_a_folder_is_not_a_run_file_and_an_endless_one_is_read_to_the_limit_only(tmp_path: Path, capsys) -> None:
    assert f"run file '{tmp_path}' must be a file, got a folder" in one_line_error(capsys, ["evaluate", str(tmp_path)])
    if os.path.exists("/dev/zero"):  # (read to its end, it never ends)
        with pytest.raises(ValueError, match=f"run file '/dev/zero' is larger than {RUN_FILE_LIMIT // 2**20} MiB"):
            read_run_file("/dev/zero")


def test_a_run_file_from_a_pipe_is_read(tmp_path: Path) -> None:
    """``salmap evaluate <(cat run.yaml)``: the shell passes a pipe."""
    read, write = os.pipe()
    os.write(write, b"seed: 3\n")
    os.close(write)
    try:
        assert read_run_file(f"/dev/fd/{read}") == {"seed": 3}
    finally:
        os.close(read)


def test_a_yaml_value_python_refuses_names_the_run_file(tmp_path: Path, capsys) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("seed: 1" + "0" * 5000 + "\n")  # (an int of over 4300 digits: Python's own ValueError)
    err = one_line_error(capsys, ["evaluate", str(path)])
    assert f"run file '{path}' is not valid YAML: " in err and len(err) < 500


def test_an_alias_bomb_in_model_args_gives_a_short_error(tmp_path: Path, capsys) -> None:
    lenet = save_lenet(tmp_path / "lenet")
    path = tmp_path / "run.yaml"
    path.write_text(f"models: [{{name: lenet, path: {lenet}, model_args: {{x: {ALIAS_BOMB}}}}}]\n"
                    f"attacks: [{{attack: fgsm}}]\ndata: {{name: mnist-sample}}\noutput: {tmp_path / 'out'}\n")
    assert path.stat().st_size < 1000
    start = time.perf_counter()
    err = one_line_error(capsys, ["evaluate", str(path)])
    assert "model arguments {'x': [['lol'], [[" in err and len(err) < 300 + 2 * len(str(tmp_path))
    assert time.perf_counter() - start < 10
    with pytest.raises(ValueError, match=r"^model arguments \{'x': .{0,90} \(--model-arg\)") as info:
        models.load(lenet, x=read_run_file(path)["models"][0]["model_args"]["x"])
    assert len(str(info.value)) < 300


def test_short_cuts_nested_values_as_it_renders_them_keeping_the_order_of_keys() -> None:
    value: list = ["lol"]
    for _ in range(30):
        value = [value] * 10  # 10**30 references: rendered whole, never
    assert len(short(value)) <= 80 and short(value).startswith("[[[")
    assert short(list(range(3))) == "[0, 1, 2]" and short("abc") == "'abc'" and len(short("x" * 500, limit=60)) == 60
    assert short({"z": 1, "a": 2}) == "{'z': 1, 'a': 2}" and short("x" * 100) == "'" + "x" * 76 + "..."


@pytest.mark.parametrize("section", ["attacks: [{attack: fgsm, params: {eps: BOMB}}]",
                                     "attacks: [{attack: fgsm}]\nexplanations: [{explainer: gradient, params: {absolute: BOMB}}]"],
                         ids=["attack-param", "explainer-param"])
def test_an_alias_bomb_in_a_parameter_gives_a_short_error(tmp_path: Path, capsys, section: str) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(f"models: [{{path: {save_lenet(tmp_path / 'lenet')}}}]\n{section.replace('BOMB', ALIAS_BOMB)}\n"
                    f"data: {{name: mnist-sample}}\noutput: {tmp_path / 'out'}\n")
    err = one_line_error(capsys, ["evaluate", str(path)])
    assert "got [['lol'], [[" in err and len(err) < 300 + 2 * len(str(tmp_path))
