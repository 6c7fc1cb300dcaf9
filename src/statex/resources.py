"""What this machine can hold, so that a request too large for it is refused with one line before anything
is allocated (instead of a MemoryError, an out-of-memory kill or a swap storm minutes later).

The limit is the smallest of the physical memory, the process's address-space limit (``ulimit -v``) and the
cgroup's memory limit (a container or a batch job's allocation); on CUDA, the device's total memory.
"""
from __future__ import annotations

import os
import resource
from pathlib import Path

from statex.errors import StatexError

GIB = 2**30


def host_memory_bytes() -> int:
    limits = []
    try:
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        pass
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY and soft > 0:
            limits.append(soft)
    except (ValueError, OSError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < 2**60:
            limits.append(int(text))
    return min(limits) if limits else 2**62


def device_memory_bytes(device=None) -> int:
    """Memory of the device computations run on: the CUDA device's total, else the host's."""
    if device is not None and getattr(device, "type", str(device)) == "cuda":
        import torch

        return torch.cuda.get_device_properties(device).total_memory
    return host_memory_bytes()


def require_memory(needed: int, what: str, device=None, hint: str = "") -> None:
    """Refuse work whose estimated memory ``needed`` (bytes) exceeds what the machine can hold."""
    available = device_memory_bytes(device)
    if needed > available:
        where = "the GPU" if device is not None and getattr(device, "type", str(device)) == "cuda" else "this machine"
        raise StatexError(f"{what} needs about {_size(needed)} but {where} can hold {_size(available)}"
                          + (f"; {hint}" if hint else ""))


def _size(nbytes: int) -> str:
    if nbytes >= 2**40:
        return f"{nbytes / 2**40:,.1f} TiB"
    if nbytes >= GIB:
        return f"{nbytes / GIB:,.1f} GiB"
    return f"{nbytes / 2**20:,.1f} MiB"
