"""Occluded outputs in 16 bits as differences from the clean pass: ``f(x') = f(x) + (f(x') - f(x))``.

Occlusion needs ``f(x) - f(x')`` for copies ``x'`` that differ from ``x`` in one patch. Run in
bfloat16, every activation of ``x'`` is rounded to 8 bits of mantissa, and on models whose
scores barely move (a random-weight ResNet: a drop of 1% of the logit) that rounding noise
swamps the drops. Here the model's graph (:func:`salmap.folding.trace`) is run on the
*differences* ``d = a(x') - a(x)`` of every activation from the clean image's activation
``a(x)``, computed in the input's precision (for a group of images at once,
:mod:`salmap.explain.occlusion_clean`): operations linear in their input (convolutions and
linear layers without their bias, average pooling, sums, reshapes) run on ``d`` in 16 bits, so
their rounding is relative to the difference, not to the activation; every other operation
``g`` (ReLU, max pooling, anything not listed) gives ``g(a(x) + d) - g(a(x))`` computed in the
input's precision. The arithmetic identity is exact; only the rounding differs from float32's,
and it is relative to what occlusion measures.

Given where each copy's patch lies (:meth:`Deltas.on_patches`), the differences of 2-D
activations are held on the region the patch can reach (:mod:`salmap.explain.occlusion_regions`):
the convolutions and poolings of the first layers then run on a small part of their input.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import Tensor, fx

from salmap.explain.fx_nodes import call_node, map_nodes, writes_into_input
from salmap.explain.occlusion_clean import CleanPasses, ImageValues, batch_layout
from salmap.explain.occlusion_layouts import KeptLayouts
from salmap.explain.occlusion_linear import linear_difference
from salmap.explain.occlusion_region_ops import Difference, RegionOps, is_relu
from salmap.explain.occlusion_regions import Region

#: the index plans kept for later images' batches hold at most this fraction of the values of the
#: first batch's copies computed whole (what ``batch_size`` bounds)
PLANS_KEPT_FRACTION = 0.25
#: the clean values of a group of images (computed together) hold at most this fraction of the same
CLEAN_KEPT_FRACTION = 0.25


class Deltas(RegionOps):
    """Runs a traced model on occluded copies as differences from their clean images.

    Parameters
    ----------
    graph: the traced model (:class:`torch.fx.GraphModule`, its ``forward(x)`` one input).
    dtype: the low precision (``torch.bfloat16`` or ``torch.float16``).
    batch_size: the copies a batch holds at most (it bounds the clean values kept for a group of
        images, :meth:`clean`).
    """

    def __init__(self, graph: fx.GraphModule, dtype: torch.dtype, batch_size: int = 1) -> None:
        self.graph = graph
        self.dtype = dtype
        self.modules = dict(graph.named_modules())
        self._weights: dict[int, Tensor] = {}
        self._clean: ImageValues | None = None  # the clean values of the image at hand
        self._held: dict[int, Tensor] = {}  # whether each region sum so far kept both regions (device bools)
        self._layouts = KeptLayouts()  # the patches' regions of the latest batch layouts
        self._first: tuple[int, int] | None = None  # the first batch's copies and the bytes of a value
        self._budget: float | None = None  # what the kept plans may hold, once known
        self._counted = False
        self._peak = 0  # the most elements of one copy's differences alive at once, in the first batch
        self._whole: int | None = None  # the same for a whole image's values (known with it)
        # only nodes computed from the input carry differences; the rest are constants
        # (a function marked ``reads_only_metadata`` reads only its input's shape and dtype: a constant)
        self.varying: set[fx.Node] = set()
        for node in graph.graph.nodes:
            if node.op == "placeholder" or any(a in self.varying for a in node.all_input_nodes) \
                    and getattr(node.target, "reads_only_metadata", False) is not True:
                self.varying.add(node)
        # each value is dropped after its last use, as the model's own forward pass drops it
        last: dict[fx.Node, fx.Node] = {}
        for node in graph.graph.nodes:
            for a in node.all_input_nodes:
                last[a] = node
        self._drops: dict[fx.Node, list[fx.Node]] = {}
        for value, user in last.items():
            self._drops.setdefault(user, []).append(value)
        self._passes = CleanPasses()
        self._fits: bool | None = None  # (:meth:`fits`, once known)
        self._batch_size = batch_size

    def clean(self, images: Tensor, i: int) -> ImageValues:
        """Every node's value on the clean image ``images[i]`` (``images``: the call's images, one
        tensor for the call), computed together with the next images' while their values fit in
        :data:`CLEAN_KEPT_FRACTION` of the values of ``batch_size`` whole copies
        (:class:`~salmap.explain.occlusion_clean.CleanPasses`). A ``ValueError`` where the graph
        does not :meth:`fit <fits>` differences."""
        if not self.fits(images[i : i + 1]):
            raise ValueError("the model's graph merges the batch into another dimension: its outputs "
                             "cannot be differences from one image's values")
        self._clean = None  # (freed before the next group's values are computed)
        self._clean = self._passes.image(images, i, self._clean_pass)
        return self._clean

    def fits(self, x: Tensor) -> bool:
        """Whether one image's values broadcast over a batch of its copies, so that the copies can be
        differences from them (checked once, on one and on two copies of ``x[0]``; not so where the
        graph merges the batch into another dimension). Sets how many images a clean pass takes:
        :data:`CLEAN_KEPT_FRACTION`, where every value is batch-first or the same for any batch
        (:func:`~salmap.explain.occlusion_clean.batch_layout`); else one."""
        if self._fits is None:
            one = self._clean_pass(x[:1])
            per_group, shapes = self._images_per_group(one), self._shapes(one)
            del one
            self._fits, rows = batch_layout(shapes, self._shapes(self._clean_pass(torch.cat([x[:1], x[:1]]))))
            if rows is not None:
                self._passes.group(rows, per_group)
        return self._fits

    def _shapes(self, values: dict[fx.Node, Any]) -> dict[fx.Node, tuple[int, ...]]:
        return {node: tuple(v.shape) for node, v in values.items() if node in self.varying and isinstance(v, Tensor)}

    def _images_per_group(self, values: dict[fx.Node, Any]) -> int:
        """The images whose clean values (and each ReLU's two clean terms in the low dtype) fit in
        :data:`CLEAN_KEPT_FRACTION` of ``batch_size`` whole copies' values (given one image's)."""
        kept = 0.0
        for node, v in values.items():
            if node in self.varying and isinstance(v, Tensor):
                kept += v.numel()
                low = [u for u in node.users if is_relu(u, self.modules)]
                kept += 2 * len(low) * v.numel() * self.dtype.itemsize / v.element_size()
        return int(CLEAN_KEPT_FRACTION * self._batch_size * self._whole_peak(values) / max(1.0, kept))

    @torch.no_grad()
    def _clean_pass(self, images: Tensor) -> dict[fx.Node, Any]:
        values: dict[fx.Node, Any] = {}
        with torch.autocast(images.device.type, enabled=False):
            for node in self.graph.graph.nodes:
                if node.op == "placeholder":
                    values[node] = images
                elif node.op != "output":
                    values[node] = self._call(node, lambda n: values[n])
        return values

    def __call__(self, images: Tensor, i: int, copies: Tensor) -> Any:
        """The model's output on ``copies`` of the clean image ``images[i]`` (``images``: the call's
        images, :meth:`clean`), in the input's dtype."""
        return self._run(images, i, Difference((copies - images[i : i + 1]).to(self.dtype)))

    def patch_region(self, layout: Hashable | None, starts: Callable[[], Tensor], size: tuple[int, int],
                     full: tuple[int, int], keep: int = 1) -> Region:
        """The region of a batch's patches of ``size``, starting at ``starts()`` ``(B, 2)`` in an image
        of spatial size ``full``: the same object for a batch ``layout`` seen lately (a key naming
        the patch positions; ``None``: one no later batch repeats), so that the index arithmetic
        kept on it and on the regions derived from it is done once per layout, not per batch.
        Layouts used within the latest ``keep`` batches are kept (one image's batches: the next
        image repeats them; 0: the last image's), the others carried to the next call
        (:class:`~salmap.explain.occlusion_layouts.KeptLayouts`), as long as their plans fit in
        :data:`PLANS_KEPT_FRACTION` of the first batch's whole copies."""
        return self._layouts.get(layout, lambda: Region(starts(), size, full), keep, self._plan_budget)

    def new_call(self) -> None:
        """Start another call on images of the same size with the same patches: the batch layouts
        and the first call's counts serve again; the clean values, the weights in the low dtype
        (the folded weights are new at every call) and the record of the region sums start afresh."""
        self.end_call()
        self._held = {}

    def end_call(self) -> None:
        """Drop what only the call at hand uses: its clean values and the weights in the low dtype."""
        self._clean, self._weights = None, {}
        self._passes.reset()

    def _plan_budget(self) -> float | None:
        """The bytes the kept plans may hold (``None`` before the first batch is done)."""
        if self._budget is None and self._first is not None and self._whole is not None:
            copies, itemsize = self._first
            self._budget = PLANS_KEPT_FRACTION * copies * self.whole_per_copy() * itemsize
        return self._budget

    def on_patches(self, images: Tensor, i: int, patches: Tensor, region: Region) -> Any:
        """The model's output on copies of the 2-D image ``images[i]`` (``images``: the call's
        ``(N, C, H, W)`` images, :meth:`clean`) that differ from it in one patch each: ``patches``
        ``(B, C, h, w)`` are the differences, on ``region`` (:meth:`patch_region`). Read
        :meth:`regions_held` once the copies are done."""
        return self._run(images, i, Difference(patches.to(self.dtype), region))

    def peak_per_copy(self) -> int:
        """The most elements of one copy's values alive at once during the first batch (the values
        dropped after their last use, as in the model's own forward pass)."""
        return self._peak

    def whole_per_copy(self) -> int:
        """The same for the model's own forward pass on one whole image (each activation dropped after
        its last use; counted with the first batch's clean image)."""
        assert self._whole is not None
        return self._whole

    def growth(self) -> int | None:
        """How many times ``batch_size`` region-held copies a batch may hold: a quarter of the ratio of
        :meth:`whole_per_copy` to :meth:`peak_per_copy`, at most 16 (``None`` until the first batch
        is done; the next calls' batches hold that many from their first)."""
        return None if self._whole is None else min(16, self._whole // max(1, 4 * self._peak))

    def _whole_peak(self, values: Any) -> int:
        live, peak = 0, 0
        for node in self.graph.graph.nodes:
            if node in self.varying and isinstance(values.get(node), Tensor):
                live += values[node].numel()
                peak = max(peak, live)
            live -= sum(values[v].numel() for v in self._drops.get(node, ())
                        if v in self.varying and isinstance(values.get(v), Tensor))
        return peak

    def _count(self, env: dict[fx.Node, Any], batch: int) -> None:
        live = sum(v.d.numel() if isinstance(v, Difference) else v.numel() for k, v in env.items()
                   if k in self.varying and isinstance(v, (Difference, Tensor)))
        self._peak = max(self._peak, live // batch)

    def regions_held(self) -> bool:
        """Whether every sum of two region-held differences so far had one region inside the other
        (else the sum lost part of one, and the outputs must be computed again without regions).
        One read of the device; resets the record."""
        held = not self._held or bool(torch.stack(list(self._held.values())).all())
        self._held = {}
        return held

    @torch.no_grad()
    def _run(self, images: Tensor, i: int, start: Difference) -> Any:
        clean = self.clean(images, i)
        env: dict[fx.Node, Any] = {}
        counting, self._counted = not self._counted, True  # the values alive, in the first call only
        if counting:
            self._first, self._whole = (start.d.shape[0], images.element_size()), self._whole_peak(clean)

        def full(node: fx.Node) -> Any:  # the value itself: clean (broadcast over the copies) + difference
            v = self._expanded(env, node)
            if not isinstance(v, Difference):
                return v
            c = clean[node]  # one kernel when the sum promotes to the clean dtype (the cast is exact)
            return c + v.d if torch.promote_types(c.dtype, v.d.dtype) == c.dtype else c + v.d.to(c.dtype)

        for node in self.graph.graph.nodes:
            if node.op == "placeholder":
                env[node] = start
            elif node.op == "output":
                return map_nodes(node.args[0], full)
            elif node not in self.varying:
                env[node] = clean[node]
            elif (r := self._regional(node, env, clean)) is not None:
                env[node] = r
            else:
                self._expand_inputs(node, env)
                d = linear_difference(node, env, self.modules, self.varying, self._low, self.dtype)
                if d is not None or (d := self._relu(node, env, clean)) is not None:
                    env[node] = Difference(d)
                else:
                    env[node] = self._in_full(node, full, clean[node], images.device.type)
            for value in self._drops.get(node, ()):
                env.pop(value, None)
            if counting:
                self._count(env, start.d.shape[0])
        raise AssertionError("graph without output")  # pragma: no cover

    def _in_full(self, node: fx.Node, full: Callable[[fx.Node], Any], c: Any, device_type: str) -> Any:
        """The node computed on the whole values (clean + difference), as a difference when it is a
        floating activation like its clean value."""
        with torch.autocast(device_type, enabled=False):
            out = self._call(node, full)
        if (isinstance(out, Tensor) and isinstance(c, Tensor) and out.is_floating_point()
                and c.dtype == out.dtype and c.dim() == out.dim() >= 1 and c.shape[1:] == out.shape[1:]
                and c.shape[0] == 1):
            return Difference(torch.sub(out, c, out=torch.empty_like(out, dtype=self.dtype)))
        return out

    def _relu(self, node: fx.Node, env: dict[fx.Node, Any], clean: ImageValues) -> Tensor | None:
        """ReLU's difference at full size, in the low dtype (:meth:`_relu_negative`, :meth:`_relu_low`)."""
        if not is_relu(node, self.modules) or any(node.kwargs.values()):
            return None
        value = env[node.all_input_nodes[0]]
        if not isinstance(value, Difference):
            return None
        return torch.maximum(value.d, self._relu_negative(node, clean)) + self._relu_low(node, clean)

    def _low(self, weight: Tensor) -> Tensor:
        key = id(weight)
        if key not in self._weights:
            self._weights[key] = weight.to(self.dtype)
        return self._weights[key]

    @property
    def exact(self) -> bool:
        """Whether the graph's arithmetic can be replayed on differences: ``False`` when an
        in-place operation writes into a value that a later node reads under the old name (the
        mutation is part of what the model computes, and the graph does not show it)."""
        order = {node: i for i, node in enumerate(self.graph.graph.nodes)}
        for node in self.graph.graph.nodes:
            if writes_into_input(node, self.modules) and node.args and isinstance(node.args[0], fx.Node):
                if any(order[user] > order[node] for user in node.args[0].users if user is not node):
                    return False
        return True

    def _call(self, node: fx.Node, value: Callable[[fx.Node], Any], fresh: bool = False) -> Any:
        # (an in-place operation works on copies, unless they are fresh: the clean pass keeps every
        # node's value)
        return call_node(node, value, self.graph, self.modules, fresh)
