"""A slow occlusion reference written straight from Zeiler & Fergus, one image and one patch at a
time (shared by the occlusion tests)."""

from __future__ import annotations

import itertools

import torch


def starts(size: int, patch: int, stride: int) -> list[int]:
    out = list(range(0, size - patch + 1, stride))
    if out[-1] + patch < size:
        out.append(size - patch)
    return out


def reference(model, x, classes, patch, stride, fill_value, mask=None, probabilities=False):
    """Plain loops: every image, every position, one forward pass per occluded copy."""
    result = torch.zeros_like(x)
    for b in range(x.shape[0]):
        img = x[b : b + 1]

        def score(inp, b=b):
            with torch.no_grad():
                out = model(inp)
            if probabilities:
                out = torch.softmax(out, dim=1)
            if out.dim() == 2:
                return float(out[0, classes[b]])
            return float((out[0, classes[b]] * mask[b]).sum())

        clean = score(img)
        total = torch.zeros(x.shape[2:], dtype=x.dtype)
        count = torch.zeros(x.shape[2:], dtype=x.dtype)
        for r, c in itertools.product(starts(x.shape[2], patch[0], stride[0]), starts(x.shape[3], patch[1], stride[1])):
            occluded = img.clone()
            fv = fill_value(x)[b] if callable(fill_value) else fill_value
            window = (slice(None), slice(None), slice(r, r + patch[0]), slice(c, c + patch[1]))
            occluded[window] = fv[window[1:]] if isinstance(fv, torch.Tensor) and fv.dim() == 3 else fv
            drop = clean - score(occluded)
            total[r : r + patch[0], c : c + patch[1]] += drop
            count[r : r + patch[0], c : c + patch[1]] += 1
        heat = torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))
        result[b] = heat
    return result
