"""Packaging: a license file, the license as an SPDX expression, py.typed, the version written once."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest

import salmap

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")


def test_packaging_license_and_typing_marker():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"  # an SPDX expression, not the deprecated {text = ...} table
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert project["license-files"] == ["LICENSE"]
    assert (Path(salmap.__file__).parent / "py.typed").is_file()
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "py.typed" in data["salmap"]


def test_packaging_version_written_once():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in config["project"] and "version" in config["project"]["dynamic"]
    assert config["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "salmap.__version__"}
    assert version("salmap") == salmap.__version__


def test_packaging_mypy_disallows_untyped_defs():
    mypy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert mypy["disallow_untyped_defs"] is True
