"""Keras 3 models (.keras files) through Keras' torch backend: trained here on the MNIST sample,
then attacked, explained and evaluated like any model."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")  # before Keras is imported anywhere

from salmap import data, models  # noqa: E402
from salmap.attacks import JSMA, PGD  # noqa: E402
from salmap.cli import main  # noqa: E402
from salmap.explain import GradCAM, GradientSaliency, Occlusion  # noqa: E402
from salmap.models.keras import KerasModel, import_keras  # noqa: E402

keras = pytest.importorskip("keras")
pytestmark = pytest.mark.skipif(keras.backend.backend() != "torch", reason="Keras runs on another backend here")


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    """A small Keras CNN (channels-last, softmax output, as Keras users write them), trained briefly."""
    keras.utils.set_random_seed(0)
    x, y = data.load("mnist-sample", "train")
    x, y = x[:2000].permute(0, 2, 3, 1).numpy(), y[:2000].numpy()
    net = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv1"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv2"),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax", name="probs"),
    ])
    net.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    net.fit(x, y, epochs=2, batch_size=64, verbose=0)
    path = tmp_path_factory.mktemp("keras") / "cnn.keras"
    net.save(path)
    return path


def test_keras_model_loads_as_a_torch_module(keras_file):
    model = models.load(keras_file)
    assert isinstance(model, KerasModel) and isinstance(model, torch.nn.Module)
    assert model.channels_last and model.undo_softmax and tuple(model.input_shape) == (1, 28, 28)
    x, y = data.load("mnist-sample", "test")
    with torch.no_grad():
        logits = model(x[:300])
    assert float((logits.argmax(1) == y[:300]).float().mean()) > 0.8
    # log-probabilities: the softmax of the "logits" is the Keras model's output
    keras_out = torch.as_tensor(model.model(x[:5].permute(0, 2, 3, 1), training=False))
    torch.testing.assert_close(torch.softmax(logits[:5], 1), keras_out)


def test_keras_model_is_attacked_and_explained(keras_file):
    model = models.load(keras_file)
    x, y = data.load("mnist-sample", "test")
    x, y = x[:6], y[:6]
    res = PGD(model, eps=0.3, steps=10)(x, y=y)
    assert float(res.success.float().mean()) >= 0.5 and float(res.linf.max()) <= 0.3 + 1e-6
    res = JSMA(model, gamma=0.1, strict_targets=False)(x, target=(y + 1) % 10)
    assert bool(res.success.any()) and float(res.l0_fraction.max()) <= 0.1 + 1e-6
    grad = GradientSaliency(model).attribute(x, target=y)
    occ = Occlusion(model, patch=4, stride=4).attribute(x, target=y)
    assert grad.shape == occ.shape == x.shape and grad.abs().sum() > 0
    cam = GradCAM(model, layer="conv2").attribute(x, target=y)
    assert cam.shape == (6, 1, 28, 28) and bool(torch.isfinite(cam).all()) and cam.sum() > 0
    # Grad-CAM reads Keras' channels-last activations: the same map as channels-first by hand
    store = {}
    handle = model.conv2.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        out = model(x)
        (g,) = torch.autograd.grad(out.gather(1, y[:, None]).sum(), store["a"])
    finally:
        handle.remove()
    a, g = store["a"].detach().movedim(-1, 1), g.movedim(-1, 1)
    expected = (g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True).clamp_min(0)
    expected = torch.nn.functional.interpolate(expected, size=(28, 28), mode="bilinear", align_corners=False)
    torch.testing.assert_close(cam, expected)


@pytest.mark.slow
def test_keras_model_is_evaluated_from_the_cli(keras_file, tmp_path):
    out = tmp_path / "eval"
    code = main(["evaluate", "--model", str(keras_file), "--attack", "fgsm:eps=0.2", "--num", "8",
                 "--batch-size", "4", "--out", str(out), "--no-progress", "--no-report"])
    assert code == 0
    assert (out / "results.jsonl").read_text().count("\n") == 8
    summary = json.loads((out / "summary.json").read_text())
    assert "fgsm" in json.dumps(summary)
    assert main(["explain", "--model", str(keras_file), "--method", "gradcam", "--layer", "conv2", "-n", "4",
                 "--out", str(tmp_path / "explain")]) == 0


def test_without_keras_the_message_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "keras", None)  # import keras now raises ImportError
    with pytest.raises(ValueError, match=r"pip install 'salmap\[keras\]'"):
        import_keras()
    (tmp_path / "m.keras").write_bytes(b"PK")
    with pytest.raises(ValueError, match=r"pip install 'salmap\[keras\]'"):
        models.load(tmp_path / "m.keras")
