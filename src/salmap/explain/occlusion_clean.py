"""The clean pass of :class:`~salmap.explain.occlusion_deltas.Deltas`: every node's value on the
clean images, computed for a group of a call's images at once and read one image at a time.

The occluded copies of an image are differences from that image's clean activations, so each
image needs every node's clean value. Computed one image at a time, that is a whole forward pass
at batch 1 per image (on a GPU, one small kernel per node and image); here the images of a group
go through the graph together and each image reads its rows (views). Each value computed from the
input must be batch-first or the same for any batch (:func:`batch_layout`), and the images' rows
must not depend on one another, as for the model's own batched predictions.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from torch import Tensor, fx


class _Group:
    """The clean values of ``images[start:stop]``; ``rows``: the nodes whose values are read by rows
    (none for a group of one), ``derived``: values computed from them (:meth:`ImageValues.derived`)."""

    __slots__ = ("derived", "images", "rows", "start", "stop", "values")

    def __init__(self, images: Tensor, start: int, values: dict[fx.Node, Any], count: int,
                 rows: frozenset[fx.Node]) -> None:
        self.images, self.start, self.stop = images, start, start + count
        self.values, self.rows = values, rows
        self.derived: dict[Hashable, Tensor] = {}


class ImageValues:
    """One image's clean values: its rows of its group's values (one view per node, made when first
    read), the group's own value for a node that is not batch-first (a constant, a size)."""

    __slots__ = ("_group", "_own", "_row")

    def __init__(self, group: _Group, row: int) -> None:
        self._group, self._row = group, row
        self._own: dict[Hashable, Any] = {}

    def __getitem__(self, node: fx.Node) -> Any:
        if node in self._own:
            return self._own[node]
        group = self._group
        value = group.values[node]
        if node in group.rows:
            value = self._own[node] = value[self._row : self._row + 1]
        return value

    def get(self, node: fx.Node, default: Any = None) -> Any:
        return self[node] if node in self._group.values else default

    def derived(self, key: Hashable, source: fx.Node, fn: Callable[[Tensor], Tensor]) -> Tensor:
        """``fn`` (elementwise) of ``source``'s clean value, computed once for the whole group and
        kept with its values; this image's rows of it."""
        if key in self._own:
            return self._own[key]  # type: ignore[no-any-return]
        group = self._group
        if key not in group.derived:
            group.derived[key] = fn(group.values[source])
        value = group.derived[key]
        if source in group.rows:
            value = value[self._row : self._row + 1]
        self._own[key] = value
        return value


def batch_layout(one: dict[fx.Node, tuple[int, ...]], two: dict[fx.Node, tuple[int, ...]]
                 ) -> tuple[bool, frozenset[fx.Node] | None]:
    """Given the shapes of the tensors computed from the input, on one image and on two: whether one
    image's values broadcast over a batch of copies (every dimension the same for both, or 1 for
    one image; not so where the batch is merged into another dimension), and the nodes whose values
    are read by rows when every value is batch-first or the same for any batch (``None`` where the
    batch stands elsewhere, e.g. a ``(sequence, batch, features)`` layout: images one at a time)."""
    rows, grouped = set(), True
    for node, s1 in one.items():
        s2 = two.get(node)
        if s2 is None or len(s1) != len(s2) or any(p != q and p != 1 for p, q in zip(s1, s2, strict=True)):
            return False, None
        if s1[:1] == (1,) and s2 == (2, *s1[1:]):
            rows.add(node)
        elif s1 != s2:  # (equal: the same for any batch, computed from the input's size, say)
            grouped = False
    return True, frozenset(rows) if grouped else None


class CleanPasses:
    """The clean values of a call's images, a group of images at a time (:meth:`image`): one at a
    time until :meth:`group` says which values are read by rows and how many images a group takes."""

    def __init__(self) -> None:
        self._rows: frozenset[fx.Node] = frozenset()  # the nodes whose values are read by rows
        self._per_group = 1  # images per group
        self._group: _Group | None = None
        self._current: ImageValues | None = None

    def group(self, rows: frozenset[fx.Node], images: int) -> None:
        """Take ``images`` images per group (at least 1), reading the values of ``rows`` by rows (the
        other nodes' values: the same for every image)."""
        self._rows, self._per_group = rows, max(1, images)

    def reset(self) -> None:
        """Drop the values (at the end of a call)."""
        self._group = self._current = None

    def image(self, images: Tensor, i: int, run: Callable[[Tensor], dict[fx.Node, Any]]) -> ImageValues:
        """The clean values of ``images[i]`` (``images``: the call's clean images, one tensor for the
        whole call), computed with those of the next images of its group (``run``: every node's value
        on a batch of clean images, nothing dropped) when its group is not the one at hand."""
        if self._current is None or self._current._group.images is not images \
                or self._current._row != i - self._current._group.start:
            if not _holds(self._group, images, i):
                self.reset()  # (the last group's values freed before the next group's are computed)
                count = min(self._per_group, images.shape[0] - i)
                self._group = _Group(images, i, run(images[i : i + count]), count,
                                     self._rows if count > 1 else frozenset())
            assert self._group is not None
            self._current = ImageValues(self._group, i - self._group.start)
        return self._current


def _holds(group: _Group | None, images: Tensor, i: int) -> bool:
    return group is not None and group.images is images and group.start <= i < group.stop
