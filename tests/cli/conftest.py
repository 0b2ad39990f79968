"""Fixtures the CLI tests share."""

import pytest

from salmap import models


@pytest.fixture
def lenet28(tmp_path):
    folder = tmp_path / "lenet"
    models.save(models.build("lenet"), folder, {"bounds": [0.0, 1.0], "input_shape": [1, 28, 28],
                                                "class_names": [str(i) for i in range(10)]})
    return str(folder)
