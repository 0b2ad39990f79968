"""What occlusion keeps of its batch layouts: for later images of a call, and for the next call.

A batch layout (the patch positions a batch holds) gets one root region
(:class:`salmap.explain.occlusion_regions.Region`), and every index plan of the batch is memoised
on it or on the regions derived from it. When a layout repeats, its batch reuses them and launches
only the arithmetic on the values. Within a call, the same layouts repeat for every image whose
patches all differ from the fill. From one call to the next, they repeat when the explainer
occludes images of the same size with the same patches, as over the batches of a data set. The
explainer then holds the plans between calls (a resnet18 at 224x224, 16x16 patches, stride 8,
``batch_size`` 256: three layouts, 45 MiB; at most a quarter of one batch of whole copies'
values), until a call on another size or the explainer is gone.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from salmap.explain.occlusion_regions import Region

T = TypeVar("T")


class KeptLayouts:
    """The root regions of batch layouts (keys naming a batch's patch positions).

    Kept for later images of the call: those used within the latest ``keep`` requests. Carried to
    the next call: the rest, the least recently carried dropped first. Both only as long as all
    the plans held fit in a budget; the kept layouts first, in the order they came (the first
    that fit: a later image reuses those)."""

    def __init__(self) -> None:
        self._regions: dict[Hashable, Region] = {}
        self._used: dict[Hashable, int] = {}  # the request that last used each
        self._bytes: dict[Hashable, int] = {}  # what each holds, once its first batch made its plans
        self._carried: dict[Hashable, Region] = {}  # for the next call, least recently carried first
        self._carried_bytes: dict[Hashable, int] = {}
        self._new: Hashable | None = None  # made by the latest request, its plans not yet counted
        self._requests = 0
        self._every = 1  # carried once that many requests have not used them

    def __len__(self) -> int:
        """The layouts kept for later images of this call."""
        return len(self._regions)

    def values(self) -> list[Region]:
        """Every region held: kept and carried."""
        return [*self._regions.values(), *self._carried.values()]

    def get(self, layout: Hashable | None, make: Callable[[], Region], keep: int,
            budget: Callable[[], float | None]) -> Region:
        """The region held for ``layout``, else ``make()`` (kept when ``keep > 0``; 0: the last
        image's, carried to the next call at once; ``None``: not held). ``budget()``: the bytes
        the plans may hold (``None``: not known yet)."""
        self._requests += 1
        self._every = keep if keep > 0 else self._every
        if self._new is not None:  # the previous batch made its plans: counted, held if they fit
            new, self._new = self._new, None
            if new in self._regions:
                self._bytes[new] = self._regions[new].nbytes()
            elif new in self._carried:
                self._carried_bytes[new] = self._carried[new].nbytes()
            self._fit(budget(), new)
        for old in [k for k, used in self._used.items() if self._requests - used > self._every]:
            self._carry(old)  # (no later image of this call repeats it)
        region = self._regions.get(layout) if layout is not None else None
        if region is None and layout in self._carried:  # an earlier call's
            region = self._regions[layout] = self._carried.pop(layout)
            if layout in self._carried_bytes:
                self._bytes[layout] = self._carried_bytes.pop(layout)
        if region is None:
            region = make()
            if layout is not None:
                self._regions[layout], self._new = region, layout
        if layout in self._regions:
            if keep > 0:
                self._used[layout] = self._requests
            else:
                self._carry(layout)
        return region

    def _fit(self, limit: float | None, new: Hashable) -> None:
        """Drop carried layouts, the least recently carried first, then ``new`` if it was kept,
        until what the plans hold fits in ``limit``."""
        if limit is None:
            return
        total = sum(self._bytes.values()) + sum(self._carried_bytes.values())
        for old in list(self._carried):
            if total <= limit:
                return
            total -= self._carried_bytes.pop(old, 0)
            del self._carried[old]
        if total > limit and new in self._regions:
            self._drop(new)

    def _carry(self, layout: Hashable) -> None:
        region = self._regions.pop(layout)
        self._carried.pop(layout, None)
        self._carried[layout] = region  # (the most recently carried last)
        if layout in self._bytes:
            self._carried_bytes[layout] = self._bytes.pop(layout)
        self._used.pop(layout, None)

    def _drop(self, layout: Hashable) -> None:
        for held in (self._regions, self._used, self._bytes, self._carried, self._carried_bytes):
            held.pop(layout, None)


class KeptForNextCall(Generic[T]):
    """One object an explainer keeps from a call for its next call, while ``key`` stays the same
    (compared with ``==``: modules by identity). A copy or a pickle starts without it."""

    def __init__(self) -> None:
        self._kept: tuple[Hashable, T] | None = None

    def get(self, key: Hashable, make: Callable[[], T], renew: Callable[[T], None]) -> T:
        """The kept object, ``renew``-ed for the new call, if its key is ``key``; else ``make()``."""
        if self._kept is not None and self._kept[0] == key:
            renew(self._kept[1])
            return self._kept[1]
        self._kept = None  # (freed before the new one is made)
        made = make()
        self._kept = (key, made)
        return made

    def __getstate__(self) -> dict[str, object]:
        return {"_kept": None}
