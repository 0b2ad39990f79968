"""A feed-forward classifier cut into a lower and an upper part: the layers below and above the
switching block of block switching (:mod:`salmap.defenses.block_switch`)."""

from __future__ import annotations

from torch import nn

from salmap._validate import check_number


def sequential_layers(model: nn.Module) -> list[nn.Module]:
    """The layers of a feed-forward model, in order: an ``nn.Sequential`` (nested ones flattened)
    or a model with ``features`` and ``classifier`` sequentials (the zoo's lenet)."""
    if isinstance(model, nn.Sequential):
        layers: list[nn.Module] = []
        for child in model:
            layers.extend(sequential_layers(child) if isinstance(child, nn.Sequential) else [child])
        return layers
    features, classifier = getattr(model, "features", None), getattr(model, "classifier", None)
    if isinstance(features, nn.Sequential) and isinstance(classifier, nn.Sequential):
        return sequential_layers(features) + sequential_layers(classifier)
    raise ValueError(
        "model must be an nn.Sequential or have nn.Sequential 'features' and 'classifier' to be split into "
        f"lower and upper parts for block switching, got {type(model).__name__}"
    )


def default_split(layers: list[nn.Module]) -> int:
    """Where the switching block ends by default: after the first ``Linear`` layer and the
    parameter-free layers right after it (its activation, dropout), so that a channel holds
    the convolutional layers and the first fully connected layer (Wang et al. 2019, §4.1.3);
    after half of the layers when no ``Linear`` layer leaves a non-empty upper part."""
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Linear):
            end = i + 1
            while end < len(layers) and not any(True for _ in layers[end].parameters()):
                end += 1
            if end < len(layers):
                return end
            break
    return max(1, len(layers) // 2)


def split_model(model: nn.Module, split: int | None = None) -> tuple[nn.Sequential, nn.Sequential]:
    """``(lower, upper)``: the first ``split`` layers of ``model`` and the rest (sharing parameters)."""
    layers = sequential_layers(model)
    at = default_split(layers) if split is None else split
    check_number("split", at, low=1, high=len(layers) - 1, integer=True)
    return nn.Sequential(*layers[:at]), nn.Sequential(*layers[at:])
