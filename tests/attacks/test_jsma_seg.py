"""SegmentationJSMA: the map against a slow reference, the starting method, known answers,
properties, goals, bad input and the command line end to end."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from torch import Tensor, nn

from salmap import models
from salmap.attacks import SegmentationJSMA
from salmap.attacks.jsma_seg import add_mask_of, hide_object, outside, predict_masks, relabel_class
from salmap.data.base import Dataset
from salmap.data.registry import register_builtin
from salmap.metrics import mask_from_output

torch.set_num_threads(1)


class TinySegmenter(nn.Module):
    """A small non-linear segmenter: conv, tanh, conv (output size = input size)."""

    def __init__(self, channels: int = 1, classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.a = nn.Conv2d(channels, 4, 3, padding=1)
        self.b = nn.Conv2d(4, classes, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.tanh(self.a(x)))


class Identity(nn.Module):
    """Binary segmenter by hand: the logit of a pixel is ``x - 0.5``."""

    def forward(self, x: Tensor) -> Tensor:
        return x - 0.5


def reference_map(model: nn.Module, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """alpha, beta of one image from the full Jacobian, straight from the definition, and the
    bool mask of the pixels that do not match the target."""
    out = model(x[None])[0]
    jac = torch.autograd.functional.jacobian(lambda v: model(v[None])[0], x)  # (C, h, w, *x.shape)
    classes, h, w = out.shape
    alpha = torch.zeros_like(x)
    beta = torch.zeros_like(x)
    pred = (out[0] > 0).long() if classes == 1 else out.argmax(0)
    for i, j in itertools.product(range(h), range(w)):
        if pred[i, j] == target[i, j]:
            continue
        t = int(target[i, j])
        if classes == 1:  # class 1 scores the logit, class 0 its negative
            sign = 1.0 if t == 1 else -1.0
            alpha += sign * jac[0, i, j]
            beta -= sign * jac[0, i, j]
            continue
        for c in range(classes):
            if c == t:
                alpha += jac[c, i, j]
            else:
                beta += jac[c, i, j]
    return alpha, beta, pred != target


def reference_first_step(
    alpha: Tensor, beta: Tensor, x: Tensor, pairs: bool, theta: float, where: Tensor | None
) -> tuple[set[int], float]:
    """The best admissible pair (or feature) of either direction by brute force: features and sign.

    A change's saliency is the first-order change of the sums: gradient times the step the
    feature can take (``theta`` cut short by the bounds [0, 1]). Only features in ``where``
    (all when None) may change."""
    a, b, v = alpha.flatten().tolist(), beta.flatten().tolist(), x.flatten().tolist()
    ok = [True] * len(v) if where is None else where.flatten().tolist()
    best, choice = -math.inf, (set(), 0.0)
    for sign in (1.0, -1.0):  # increase first: it wins ties
        step = [min(p + theta, 1.0) - p if sign > 0 else p - max(p - theta, 0.0) for p in v]
        free = [p for p in range(len(a)) if ok[p] and (v[p] < 1.0 if sign > 0 else v[p] > 0.0)]
        groups = itertools.combinations(free, 2) if pairs else ((p,) for p in free)
        for g in groups:
            sa, sb = sum(a[p] * step[p] for p in g), sum(b[p] * step[p] for p in g)
            if sign * sa > 0 and sign * sb < 0 and abs(sa) * abs(sb) > best:
                best, choice = abs(sa) * abs(sb), (set(g), sign)
    return choice


@pytest.mark.parametrize("classes", [1, 3])
def test_map_matches_the_full_jacobian_reference(classes: int) -> None:
    model = TinySegmenter(1, classes).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 4, 4, generator=gen)
    target = torch.randint(0, max(classes, 2), (2, 4, 4), generator=gen)
    attack = SegmentationJSMA(model)
    _, alpha, beta = attack.derivatives(x, target, classes)
    assert beta is not None
    for i in range(2):
        ref_a, ref_b, _ = reference_map(model, x[i], target[i])
        assert ref_a.abs().sum() > 0
        torch.testing.assert_close(alpha[i], ref_a, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(beta[i], ref_b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("local", [True, False])
@pytest.mark.parametrize("pairs", [True, False])
@pytest.mark.parametrize("classes", [1, 3])
def test_first_change_is_the_brute_force_best(pairs: bool, classes: int, local: bool) -> None:
    model = TinySegmenter(1, classes, seed=3).eval()
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(3, 1, 4, 4, generator=gen) * 0.8 + 0.1
    target = torch.randint(0, max(classes, 2), (3, 4, 4), generator=gen)
    theta = 0.3  # larger than some features' room to a bound: the steps differ
    attack = SegmentationJSMA(model, theta=theta, gamma=1.0, pairs=pairs, local=local, max_iterations=1)
    result = attack(x, target=target)
    for i in range(3):
        ref_a, ref_b, wrong = reference_map(model, x[i], target[i])
        features, sign = reference_first_step(ref_a, ref_b, x[i], pairs, theta, wrong[None] if local else None)
        assert features
        delta = (result.x_adv[i] - x[i]).flatten()
        assert set(delta.nonzero().flatten().tolist()) == features
        moved = (x[i].flatten() + sign * theta).clamp(0, 1) - x[i].flatten()
        torch.testing.assert_close(delta[sorted(features)], moved[sorted(features)])


class Shared(nn.Module):
    """logit_j = (x_j - 0.5) + 0.8 (x_0 - 0.5) on a (B, 1, 1, 4) input: feature 0 raises every pixel."""

    def forward(self, x: Tensor) -> Tensor:
        return x - 0.5 + 0.8 * (x[..., :1] - 0.5)


def test_local_domain_changes_only_features_under_wrong_pixels() -> None:
    x = torch.zeros(1, 1, 1, 4)
    target = torch.tensor([[[0, 1, 1, 0]]])
    # Without the local domain the map picks feature 0 (alpha 1.6 > 1), which turns pixel 0
    # (target 0) on and cannot be taken back: 3 of 4 pixels at most.
    loose = SegmentationJSMA(Shared(), pairs=False, local=False, required=1.0, gamma=1.0)(x, target=target)
    assert not bool(loose.success[0]) and float(loose.x_adv[0, 0, 0, 0]) == 1.0
    # With it only the features under the wrong pixels 1 and 2 may change: exactly those two.
    result = SegmentationJSMA(Shared(), pairs=False, required=1.0, gamma=1.0)(x, target=target)
    assert bool(result.success[0])
    assert result.x_adv.flatten().tolist() == [0.0, 1.0, 1.0, 0.0]


def test_a_region_is_the_domain_unless_local_is_asked_for() -> None:
    x = torch.zeros(1, 1, 1, 4)
    target = torch.tensor([[[0, 1, 1, 0]]])
    region = torch.tensor([True, False, False, False]).reshape(1, 4)  # only feature 0, under no wrong pixel
    given = SegmentationJSMA(Shared(), pairs=False, region=region, gamma=1.0)(x, target=target)
    assert given.x_adv.flatten().tolist() == [1.0, 0.0, 0.0, 0.0]
    both = SegmentationJSMA(Shared(), pairs=False, region=region, local=True, gamma=1.0)(x, target=target)
    assert torch.equal(both.x_adv, x) and int(both.iterations[0]) == 0


def seed_method(model: nn.Module, image: Tensor, target: Tensor, theta: float, required: float, limit: int) -> Tensor:
    """The seed document's method, its two functions verbatim, in the loop it describes
    (``limit``: the distortion limit, in changed features)."""
    start = image

    def compute_jacobian(model, image):
        image.requires_grad = True
        output = torch.sigmoid(model(image.unsqueeze(0)))  # Forward pass
        grad_outputs = torch.ones_like(output.squeeze(0))  # Same shape as output
        element_wise_grad = torch.autograd.grad(output.squeeze(0), image, grad_outputs=grad_outputs, create_graph=True)[0]
        return element_wise_grad

    def saliency_map(jacobian, target_label):
        target_grad = jacobian * target_label  # Positive if it pushes towards target class
        return target_grad  # Saliency scores

    image = image.clone()
    while int((image != start).sum()) < limit:
        pred = (model(image[None])[0, 0] > 0).long()
        if (pred == target).float().mean() >= required:
            break
        sal = saliency_map(compute_jacobian(model, image), target.float()).detach()
        sal[image.detach() >= 1.0] = -math.inf  # a saturated feature cannot move further
        p = int(sal.flatten().argmax())
        if sal.flatten()[p] <= 0:
            break
        image = image.detach().flatten()
        image[p] = (image[p] + theta).clamp(0, 1)
        image = image.view(1, *target.shape)
    return image.detach()


def test_masked_map_reproduces_the_seed_method() -> None:
    model = TinySegmenter(1, 1, seed=5).eval()
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(2, 1, 6, 6, generator=gen) * 0.5
    target = torch.zeros(2, 6, 6, dtype=torch.long)
    target[:, 1:4, 2:5] = 1
    attack = SegmentationJSMA(model, map="masked", theta=0.4, gamma=0.5, required=0.95)
    result = attack(x, target=target)
    budget = math.floor(0.5 * 36)
    for i in range(2):
        expected = seed_method(model, x[i], target[i], 0.4, 0.95, budget)
        torch.testing.assert_close(result.x_adv[i], expected)
    assert (result.l0 > 0).all()


def test_known_answers_on_a_hand_made_segmenter() -> None:
    # logit = x - 0.5: a pixel is class 1 exactly when its own feature exceeds 0.5.
    x = torch.zeros(1, 1, 4, 4)
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 1:3, 1:3] = 1
    for map_, pairs, iterations in (("masked", False, 4), ("jsma", True, 2), ("jsma", False, 4)):
        result = SegmentationJSMA(Identity(), map=map_, pairs=pairs, required=1.0, gamma=0.5)(x, target=target)
        assert bool(result.success[0])
        assert int(result.iterations[0]) == iterations
        expected = target[:, None].float()  # exactly the four target pixels go to 1
        torch.testing.assert_close(result.x_adv, expected)
        assert float(result.extra["pixel_accuracy"][0]) == 1.0
        assert float(result.extra["iou_target"][0]) == 1.0
        assert float(result.extra["pixel_accuracy_before"][0]) == 12 / 16
    # Hiding needs decreases, which the jsma map finds and the masked map (increase only) does not.
    x = target[:, None].float()
    hide = torch.zeros_like(target)
    assert bool(SegmentationJSMA(Identity(), required=1.0, gamma=0.25)(x, target=hide).success[0])
    assert not bool(SegmentationJSMA(Identity(), required=1.0, gamma=0.2)(x, target=hide).success[0])
    masked = SegmentationJSMA(Identity(), map="masked", required=1.0, gamma=0.5)(x, target=hide)
    assert not bool(masked.success[0]) and int(masked.l0[0]) == 0


def small_unet(classes: int) -> nn.Module:
    torch.manual_seed(0)
    return models.build("unet", in_channels=1, num_classes=classes, base=4, depth=2).eval()


def flipped_targets(model: nn.Module, x: Tensor) -> Tensor:
    pred = predict_masks(model, x)
    target = pred.clone()
    target[:, 4:8, 4:8] = 1 - target[:, 4:8, 4:8].clamp(max=1)
    return target


@pytest.mark.parametrize("map_", ["jsma", "masked"])
def test_properties_bounds_budget_region_inputs_model(map_: str) -> None:
    model = small_unet(1)
    model.train()  # the attack must evaluate in eval mode and give the mode back
    flags = [p.requires_grad for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    model.eval()
    target = flipped_targets(model, x)
    model.train()
    x_copy, target_copy = x.clone(), target.clone()
    region = torch.zeros(16, 16, dtype=torch.bool)
    region[:, :10] = True
    attack = SegmentationJSMA(model, gamma=0.05, theta=0.7, map=map_, k=2, region=region, bounds=(0.0, 1.0))
    result = attack(x, target=target)
    assert torch.equal(x, x_copy) and torch.equal(target, target_copy)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert (result.l0 <= math.floor(0.05 * 256)).all()
    changed = (result.x_adv != x)[:, 0]
    assert not changed[:, ~region].any()
    assert changed.any()
    assert result.pred_before.shape == (3, 16, 16) and result.pred_after.shape == (3, 16, 16)
    torch.testing.assert_close(result.success, result.extra["pixel_accuracy"] >= 0.99)


@pytest.mark.parametrize("classes", [1, 4])
def test_batched_equals_one_by_one(classes: int) -> None:
    model = small_unet(classes)
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    target = flipped_targets(model, x)
    attack = SegmentationJSMA(model, gamma=0.04, k=2, region=outside())
    batched = attack(x, target=target)
    for i in range(3):
        single = attack(x[i : i + 1], target=target[i : i + 1])
        torch.testing.assert_close(single.x_adv[0], batched.x_adv[i])
        assert int(single.iterations[0]) == int(batched.iterations[i])
        assert bool(single.success[0]) == bool(batched.success[i])


def test_finished_images_drop_out_and_success_is_reached() -> None:
    # Two images: one already matches the target (no change), one must change.
    x = torch.zeros(2, 1, 4, 4)
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[1, 0, 0] = 1
    result = SegmentationJSMA(Identity(), required=1.0, pairs=False)(x, target=target)
    assert result.success.tolist() == [True, True]
    assert result.iterations.tolist() == [0, 1]
    assert result.l0.tolist() == [0.0, 1.0]


def test_output_size_may_differ_from_input_size() -> None:
    class Pooled(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return nn.functional.avg_pool2d(x, 2) * 4 - 1.0

    x = torch.zeros(1, 1, 8, 8)
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 0, 0] = 1
    for map_ in ("jsma", "masked"):
        result = SegmentationJSMA(Pooled(), map=map_, required=1.0, pairs=False)(x, target=target)
        assert bool(result.success[0]) and result.pred_after.shape == (1, 4, 4)
        assert (result.x_adv[0, 0, 2:, :] == 0).all() and (result.x_adv[0, 0, :, 2:] == 0).all()


def test_goal_helpers() -> None:
    mask = torch.tensor([[[0, 1, 2], [2, 2, 0]], [[3, 0, 0], [0, 1, 1]]])
    assert hide_object(mask).eq(0).all()
    assert hide_object(mask, classes=[2]).tolist() == [[[0, 1, 0], [0, 0, 0]], [[3, 0, 0], [0, 1, 1]]]
    obj = mask == 1
    assert hide_object(mask, object_mask=obj).tolist() == [[[0, 0, 2], [2, 2, 0]], [[3, 0, 0], [0, 0, 0]]]
    assert relabel_class(mask, torch.tensor([2, 1]), torch.tensor([5, 4])).tolist() == [
        [[0, 1, 5], [5, 5, 0]], [[3, 0, 0], [0, 4, 4]]]
    other = torch.tensor([[[0, 0, 0], [0, 0, 7]], [[0, 0, 0], [0, 0, 0]]])
    assert add_mask_of(mask, other).tolist() == [[[0, 1, 2], [2, 2, 7]], [[3, 0, 0], [0, 1, 1]]]
    with pytest.raises(ValueError, match="other must have the shape"):
        add_mask_of(mask, other[:1])


def test_bad_input_is_named() -> None:
    model = small_unet(1)
    x = torch.rand(2, 1, 16, 16)
    good = torch.zeros(2, 16, 16, dtype=torch.long)
    with pytest.raises(ValueError, match=r"target must be class-index masks of the model's output size \(2, 16, 16\)"):
        SegmentationJSMA(model)(x, target=torch.zeros(2, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target must hold classes in \[0, 1\].*got values in \[0, 2\]"):
        SegmentationJSMA(model)(x, target=good + 2 * (torch.arange(16) == 3))
    with pytest.raises(ValueError, match="integer tensor"):
        SegmentationJSMA(model)(x, target=good.float())
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=rf"required must be in \(0.0, 1.0\], got {bad}"):
            SegmentationJSMA(model, required=bad)
    with pytest.raises(ValueError, match=r"region must be a mask of shape"):
        SegmentationJSMA(model, region=torch.ones(15, 16, dtype=torch.bool))(x, target=good)
    with pytest.raises(ValueError, match="map must be one of"):
        SegmentationJSMA(model, map="other")
    with pytest.raises(ValueError, match="gamma must be in"):
        SegmentationJSMA(model, gamma=0.0)
    with pytest.raises(ValueError, match="theta must be in"):
        SegmentationJSMA(model, theta=-1.0)
    with pytest.raises(ValueError, match="targeted only"):
        SegmentationJSMA(model)(x, y=good)
    with pytest.raises(ValueError, match=r"\(B, classes, H, W\)"):
        SegmentationJSMA(nn.Flatten())(x, target=good)


@register_builtin("test-squares-seg")
def _squares(split: str = "test") -> Dataset:
    """A tiny segmentation set for the CLI test: bright squares (class 1) on faint noise."""
    gen = torch.Generator().manual_seed(0 if split == "train" else 1)
    n = 48 if split == "train" else 4
    x = torch.rand(n, 1, 16, 16, generator=gen) * 0.2
    y = torch.zeros(n, 16, 16, dtype=torch.long)
    for i in range(n):
        r, c = (int(v) for v in torch.randint(0, 10, (2,), generator=gen))
        x[i, 0, r : r + 6, c : c + 6] = 0.9
        y[i, r : r + 6, c : c + 6] = 1
    return Dataset(x, y, ["background", "square"], "test-squares-seg", task="segmentation")


def test_cli_train_and_attack_end_to_end(tmp_path, capsys) -> None:
    from salmap.cli import main

    ckpt = tmp_path / "unet"
    assert main(["train", "--task", "segmentation", "--data", "test-squares-seg", "--epochs", "3",
                 "--batch-size", "8", "--lr", "0.01", "--out", str(ckpt)]) == 0
    meta = json.loads((ckpt / "model.json").read_text())
    assert meta["task"] == "segmentation" and meta["arch"]["kwargs"]["num_classes"] == 1
    assert "test mean IoU" in capsys.readouterr().out
    out = tmp_path / "attack"
    assert main(["attack", "jsma-seg", "--model", str(ckpt), "--goal", "hide", "-n", "3", "--gamma", "0.2",
                 "--required", "0.95", "--k", "4", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["data"] == "test-squares-seg" and len(results["samples"]) == 3
    for row in results["samples"]:
        assert row["success"] == (row["pixel_accuracy"] >= 0.95)
        assert row["l0_percent"] <= 20.0 + 1e-9
    assert (out / "grid.png").stat().st_size > 0
    assert "pixel_accuracy" in capsys.readouterr().out
    assert "local=None" in results["settings"]
    assert main(["attack", "jsma-seg", "--model", str(ckpt), "--goal", "hide", "-n", "2", "--gamma", "0.05",
                 "--global-domain", "--out", str(out), "--overwrite"]) == 0
    assert "local=False" in json.loads((out / "results.json").read_text())["settings"]
    capsys.readouterr()
    assert main(["attack", "jsma-seg", "--model", str(ckpt), "--goal", "relabel", "-n", "2", "--out", str(out)]) == 2
    assert "at least 3 classes" in capsys.readouterr().err


def test_predictions_are_masks_for_binary_models() -> None:
    out = torch.tensor([[[[1.0, -1.0], [0.5, -0.2]]]])
    assert mask_from_output(out).tolist() == [[[1, 0], [1, 0]]]
