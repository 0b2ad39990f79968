"""Records the operators a call dispatches, for the tests that count kernel launches and host reads."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: Operators that read a device value back to the host (a synchronisation on a GPU).
READS = {"aten._local_scalar_dense", "aten.nonzero", "aten.index[bool]", "aten.masked_select", "aten.index_put[bool]"}


class Recorder(TorchDispatchMode):
    """``with Recorder() as r: ...`` then ``r.ops``: every dispatched operator's name. An index
    or index_put with a boolean mask is named ``...[bool]``: it reads the number of the mask's rows."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = str(func.overloadpacket)
        if name in ("aten.index", "aten.index_put", "aten.index_put_") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None
        ):
            name = "aten.index[bool]" if name == "aten.index" else "aten.index_put[bool]"
        self.ops.append(name)
        return func(*args, **(kwargs or {}))

    @property
    def reads(self) -> int:
        """How many of the recorded operators read the device (:data:`READS`)."""
        return sum(op in READS for op in self.ops)
