"""Peak memory of the running process, for the benchmarks that measure one attack in a fresh process."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_kib() -> int:
    """This process's peak resident set size in KiB.

    ``VmHWM`` belongs to the process's own address space, whereas ``ru_maxrss`` of a child
    started by ``subprocess`` keeps the parent's peak at the time of the fork (Linux), which
    would hide the attack's figure behind whatever the parent did before.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
