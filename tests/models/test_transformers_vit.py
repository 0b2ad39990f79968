"""A real HuggingFace ViT (built from a small config, no download): its ImageClassifierOutput is
attacked and explained, and Grad-CAM turns its token outputs into maps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from salmap.attacks import JSMA, PGD
from salmap.explain import GradCAM, GradientSaliency, Occlusion
from salmap.explain.gradcam import tokens_to_maps
from salmap.models import Normalized, SelectOutput

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def vit():
    config = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=5, num_channels=3,
    )
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(config).eval()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return model, x


class Logits(nn.Module):
    """What a user writes by hand without salmap's output adapter."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(pixel_values=x).logits


def test_vit_output_is_attacked_and_explained_like_its_logits(vit):
    model, x = vit
    assert type(model(x)).__name__ == "ImageClassifierOutput"
    y = model(x).logits.argmax(1)
    by_hand = Logits(model)
    torch.testing.assert_close(PGD(model, eps=0.03, steps=3)(x, y=y).x_adv, PGD(by_hand, eps=0.03, steps=3)(x, y=y).x_adv)
    target = (y + 1) % 5
    a = JSMA(model, gamma=0.01, strict_targets=False)(x, target=target)
    b = JSMA(by_hand, gamma=0.01, strict_targets=False)(x, target=target)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success)
    torch.testing.assert_close(GradientSaliency(model).attribute(x), GradientSaliency(by_hand).attribute(x))
    torch.testing.assert_close(Occlusion(model, patch=8).attribute(x), Occlusion(by_hand, patch=8).attribute(x))
    # the key can be named, and a missing one lists what the output holds
    torch.testing.assert_close(GradientSaliency(SelectOutput(model, "logits")).attribute(x),
                               GradientSaliency(model).attribute(x))
    with pytest.raises(ValueError, match="no key 'scores'; keys found: 'logits'"):
        GradientSaliency(SelectOutput(model, "scores")).attribute(x)
    # normalised like the ViT image processor: still pixel space for the attack
    norm = Normalized(model, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    res = PGD(norm, eps=0.03, steps=2)(x, y=y)
    assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1


def test_gradcam_on_vit_tokens_matches_the_hand_computation(vit):
    model, x = vit
    layer = "vit.layers.1.layernorm_before"
    y = model(x).logits.argmax(1)
    cam = GradCAM(model, layer=layer).attribute(x, target=y)
    assert cam.shape == (4, 1, 32, 32)

    # by hand: tokens (B, 17, 32), class token dropped, 4x4 grid of patches
    store = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        logits = model(x).logits
        act = store["a"]
        (grad,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), act)
    finally:
        handle.remove()
    maps = act.detach()[:, 1:].reshape(4, 4, 4, 32).permute(0, 3, 1, 2)
    gmaps = grad[:, 1:].reshape(4, 4, 4, 32).permute(0, 3, 1, 2)
    expected = (gmaps.mean(dim=(2, 3), keepdim=True) * maps).sum(1, keepdim=True).clamp_min(0)
    expected = F.interpolate(expected, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(cam, expected)

    def reshape(tokens):
        return tokens[:, 1:].reshape(tokens.shape[0], 4, 4, -1).permute(0, 3, 1, 2)

    torch.testing.assert_close(GradCAM(model, layer=layer, reshape=reshape).attribute(x, target=y), cam)


def test_gradcam_token_errors(vit):
    model, x = vit
    with pytest.raises(ValueError, match=r"layer 'classifier' must output .* got \(4, 5\)"):
        GradCAM(model, layer="classifier").attribute(x)
    with pytest.raises(ValueError, match="reshape must return"):
        GradCAM(model, layer="vit.layernorm", reshape=lambda t: t).attribute(x)
    with pytest.raises(ValueError, match="outputs 18 tokens"):
        tokens_to_maps(torch.zeros(1, 18, 8), (32, 32))
    assert tokens_to_maps(torch.zeros(2, 1 + 4 * 6, 8), (32, 48)).shape == (2, 8, 4, 6)
    assert tokens_to_maps(torch.zeros(2, 16, 8), (32, 32)).shape == (2, 8, 4, 4)
