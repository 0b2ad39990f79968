"""What a target or goal is, for classifiers and segmenters: the one place that decides it.

Every command (``salmap attack``, ``evaluate``, ``defend``, ``explain``) and the Python API
take their targets from here, so that a mode means the same thing everywhere.

Classifier modes (:data:`CLASSIFIER_MODES`)
-------------------------------------------
``none``
    untargeted: the attack is called with the true labels ``y``.
``random``
    a seeded uniformly random class other than the true one (:func:`random_targets`).
``next``
    the next class, ``(y + 1) mod K``.
``least-likely``
    the class with the lowest clean logit (Kurakin et al. 2016's "least likely class").
``all``
    every other class in turn: the source-target grid of Papernot et al. 2016, ``K - 1``
    rows per sample, sample-major (:func:`all_other_targets`).

Segmentation goals (:data:`SEGMENTATION_GOALS`)
-----------------------------------------------
A goal is an edit of the model's **clean predicted mask** of the sample (as Metzen et al.
2017 build their targets), so that only the pixels the goal names must change:

``hide``
    every pixel background (class 0).
``relabel``
    the pixels of the sample's main object class (its most frequent non-background class,
    ties to the smaller index) become ``to`` (default: the next object class,
    ``1 + main mod (K - 1)``); needs at least three classes.
``add``
    the objects of the **next selected sample** added to the sample's own mask. "Next
    selected sample" is the sample after it in the order the run selected its samples,
    wrapping from the last to the first (:func:`next_positions`), whatever the batching.

Already at the target
---------------------
:func:`already_reached` decides, for every targeted call, whether the clean prediction
is already the target: such samples are not attacked (JSMA refuses them) and count as a
success with no perturbation and no iterations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from salmap._validate import as_index_tensor, check_labels, check_number, check_seed
from salmap.gradients import Model, frozen, predict
from salmap.metrics import mask_from_output

#: targeting modes of classifiers, see the module docstring
CLASSIFIER_MODES = ("none", "random", "next", "least-likely", "all")
#: goals of segmentation attacks, see the module docstring
SEGMENTATION_GOALS = ("hide", "relabel", "add")
#: the class of background pixels in segmentation masks
BACKGROUND = 0


def random_targets(
    y: Tensor, num_classes: int, seed: int | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """Random target classes, uniformly among the classes other than ``y`` (never the true class).

    Reproducible with ``seed`` or an explicit ``generator``; drawn on the CPU, so the same
    seed gives the same targets on every device.

    Examples
    --------
    >>> t = random_targets(torch.tensor([0, 1, 2]), 3, seed=0)
    >>> bool((t != torch.tensor([0, 1, 2])).all())
    True
    """
    check_number("num_classes", num_classes, low=2, integer=True)
    labels = as_index_tensor(y, "y")
    if labels.dim() != 1:
        raise ValueError(f"y must be a sequence of class indices (B,), got shape {tuple(labels.shape)}")
    y = check_labels(labels, labels.shape[0], num_classes, "y")
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else check_seed(seed))
    offset = torch.randint(1, num_classes, (y.shape[0],), generator=generator)
    return (y.cpu() + offset) % num_classes


def all_other_targets(x: Tensor, y: Tensor, num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """The source-target grid of Papernot et al.: every sample paired with every other class.

    Returns ``(x_rep, y_rep, targets)`` with ``B * (num_classes - 1)`` rows, sample-major.
    """
    check_number("num_classes", num_classes, low=2, integer=True)
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a tensor of inputs (B, ...), got {type(x).__name__}")
    y = check_labels(y, x.shape[0], num_classes, "y", x.device)
    classes = torch.arange(num_classes, device=x.device)
    grid = classes.expand(y.shape[0], num_classes)
    keep = grid != y[:, None]
    targets = grid[keep]
    repeats = num_classes - 1
    return x.repeat_interleave(repeats, dim=0), y.repeat_interleave(repeats), targets


def least_likely(logits: Tensor) -> Tensor:
    """The class with the lowest score of each row of ``(B, K)`` logits (ties: the smaller index)."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be (B, classes), got shape {tuple(logits.shape)}")
    return logits.argmin(dim=1)


def classifier_targets(
    mode: str, y: Tensor, num_classes: int, seed: int = 0, logits: Tensor | None = None
) -> Tensor | None:
    """Targets of one classifier mode for true labels ``y`` (None for ``none``).

    ``seed`` draws the ``random`` targets; ``logits`` (the clean outputs) are needed for
    ``least-likely``. ``all`` adds rows: use :func:`expand` for it.
    """
    if mode == "none":
        return None
    if mode == "random":
        return random_targets(y, num_classes, seed=seed).to(y.device)
    if mode == "next":
        return (y + 1) % num_classes
    if mode == "least-likely":
        if logits is None:
            raise ValueError("targets 'least-likely' need the clean logits of the samples")
        return least_likely(logits).to(y.device)
    if mode == "all":
        raise ValueError("targets 'all' add rows: use salmap.targets.expand")
    raise ValueError(f"targets must be one of {', '.join(CLASSIFIER_MODES)}, got {mode!r}")


@dataclass
class Rows:
    """The attack calls of one batch: inputs, true labels, targets (None: untargeted) and the
    position in the batch of the sample each row comes from."""

    x: Tensor
    y: Tensor
    target: Tensor | None
    source: Tensor


def expand(
    mode: str, x: Tensor, y: Tensor, num_classes: int, seed: int = 0, logits: Tensor | None = None
) -> Rows:
    """The rows to attack for a classifier mode: one per sample, or ``K - 1`` per sample for ``all``."""
    if mode == "all":
        source = torch.arange(x.shape[0], device=x.device).repeat_interleave(num_classes - 1)
        xs, ys, targets = all_other_targets(x, y, num_classes)
        return Rows(xs, ys, targets, source)
    target = classifier_targets(mode, y, num_classes, seed=seed, logits=logits)
    return Rows(x, y, target, torch.arange(x.shape[0], device=x.device))


def rows_per_sample(mode: str, num_classes: int) -> int:
    """How many attack rows one sample gives under ``mode``."""
    return num_classes - 1 if mode == "all" else 1


def already_reached(pred: Tensor, target: Tensor) -> Tensor:
    """Bool ``(B,)``: the clean prediction already is the target.

    ``pred`` and ``target`` are class indices ``(B,)`` (classifiers) or masks ``(B, H, W)``
    (segmenters: every pixel must match).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have one shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    same = pred == target.to(pred.device)
    return same if same.dim() == 1 else same.flatten(1).all(dim=1)


# -- segmentation ----------------------------------------------------------------------
def next_positions(position: Tensor, count: int) -> Tensor:
    """The "next selected sample" of each position among ``count`` selected samples (wrapping)."""
    check_number("count", count, low=1, integer=True)
    return (position + 1) % count


def main_class(masks: Tensor) -> Tensor:
    """Per mask ``(B, H, W)``: its most frequent non-background class (ties to the smaller index),
    or background when the mask is all background."""
    flat = masks.flatten(1).long()
    classes = int(flat.max()) + 1 if flat.numel() else 1
    counts = torch.zeros(flat.shape[0], max(classes, 2), dtype=torch.long, device=masks.device)
    counts.scatter_add_(1, flat, torch.ones_like(flat))
    fg = counts[:, 1:]
    return torch.where(fg.sum(dim=1) > 0, fg.argmax(dim=1) + 1, torch.zeros_like(fg[:, 0]))


def predict_masks(model: Model, x: Tensor, batch_size: int = 64) -> Tensor:
    """The model's class-index masks ``(B, H, W)`` for ``x`` (model frozen, then restored)."""
    with frozen(model):
        return mask_from_output(predict(model, x, batch_size))


def hide_object(
    mask: Tensor, object_mask: Tensor | None = None, classes: int | list[int] | None = None, background: int = BACKGROUND
) -> Tensor:
    """Target that hides objects: their pixels become ``background``.

    Which pixels: ``object_mask`` (bool ``(B, H, W)``) when given, else the pixels of the
    given ``classes``, else every pixel that is not already background.

    Examples
    --------
    >>> hide_object(torch.tensor([[[0, 1], [2, 0]]]), classes=2)
    tensor([[[0, 1],
             [0, 0]]])
    """
    if object_mask is not None:
        if object_mask.shape != mask.shape:
            raise ValueError(f"object_mask must have the shape of mask {tuple(mask.shape)}, got {tuple(object_mask.shape)}")
        hide = object_mask.bool()
    elif classes is not None:
        wanted = torch.as_tensor([classes] if isinstance(classes, int) else list(classes), device=mask.device)
        hide = torch.isin(mask, wanted)
    else:
        hide = mask != background
    return torch.where(hide, torch.full_like(mask, background), mask)


def relabel_class(mask: Tensor, source: int | Tensor, target: int | Tensor) -> Tensor:
    """Target in which the pixels of class ``source`` become class ``target`` (ints, or ``(B,)`` per image).

    Examples
    --------
    >>> relabel_class(torch.tensor([[[0, 3], [3, 1]]]), 3, 5)
    tensor([[[0, 5],
             [5, 1]]])
    """
    src = torch.as_tensor(source, device=mask.device).reshape(-1, *([1] * (mask.dim() - 1)))
    dst = torch.as_tensor(target, device=mask.device).reshape(-1, *([1] * (mask.dim() - 1)))
    return torch.where(mask == src, dst.to(mask.dtype).expand_as(mask), mask)


def add_mask_of(mask: Tensor, other: Tensor, background: int = BACKGROUND) -> Tensor:
    """Target that adds the objects of another image's mask: ``other`` wherever it is not background.

    Examples
    --------
    >>> add_mask_of(torch.tensor([[[1, 0], [0, 0]]]), torch.tensor([[[0, 0], [2, 0]]]))
    tensor([[[1, 0],
             [2, 0]]])
    """
    if other.shape != mask.shape:
        raise ValueError(f"other must have the shape of mask {tuple(mask.shape)}, got {tuple(other.shape)}")
    return torch.where(other != background, other, mask)


def segmentation_goal(
    goal: str, masks: Tensor, next_masks: Tensor | None = None, num_classes: int = 2, to: int | None = None
) -> Tensor:
    """Target masks of a segmentation goal (see the module docstring).

    Parameters
    ----------
    goal: ``hide``, ``relabel`` or ``add``.
    masks: the clean predicted masks of the samples ``(B, H, W)``.
    next_masks: for ``add``, the clean predicted masks of the next selected samples (same shape).
    num_classes: classes of the segmenter (``relabel`` needs at least three).
    to: for ``relabel``, the new class (default: the next object class).

    Examples
    --------
    >>> segmentation_goal("add", torch.tensor([[[1, 0], [0, 0]]]), torch.tensor([[[0, 0], [1, 0]]]))
    tensor([[[1, 0],
             [1, 0]]])
    """
    masks = masks.long()
    if goal == "hide":
        return hide_object(masks)
    if goal == "add":
        if next_masks is None or next_masks.shape != masks.shape:
            got = None if next_masks is None else tuple(next_masks.shape)
            raise ValueError(f"goal 'add' needs the next samples' masks of shape {tuple(masks.shape)}, got {got}")
        return add_mask_of(masks, next_masks.to(masks.device).long())
    if goal == "relabel":
        if num_classes < 3:
            raise ValueError(f"goal 'relabel' needs a model with at least 3 classes, got {num_classes}")
        source = main_class(masks)
        if to is None:
            new = 1 + source % (num_classes - 1)
        else:
            if isinstance(to, bool) or not 0 <= to < num_classes:
                raise ValueError(f"to must be a class in [0, {num_classes - 1}], got {to}")
            new = torch.full_like(source, to)
        new = torch.where(source == BACKGROUND, source, new)  # nothing to relabel in an empty mask
        return relabel_class(masks, source, new)
    raise ValueError(f"goal must be one of {', '.join(SEGMENTATION_GOALS)}, got {goal!r}")


__all__ = [
    "BACKGROUND", "CLASSIFIER_MODES", "SEGMENTATION_GOALS", "Rows", "add_mask_of", "all_other_targets",
    "already_reached", "classifier_targets", "expand", "hide_object", "least_likely", "main_class", "next_positions",
    "predict_masks", "random_targets", "relabel_class", "rows_per_sample", "segmentation_goal",
]
