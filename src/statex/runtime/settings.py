"""Which kernels run: one ``KernelSettings`` object, read once from the environment and settable in code.

    from statex import runtime
    runtime.current()                        # KernelSettings(backend='auto', ssd_kernel='triton', ...)
    with runtime.use(backend="torch"):       # the pure-torch ops for everything inside the block
        model(ids)
    runtime.configure(autotune="off")        # for the rest of this process

The environment (docs/environment.md) is read when the settings are first needed; later changes to os.environ are
not seen by this process (child processes read their own). Settings changed in code apply to this process only.
Every value is checked when it is set: a typo is a ValueError naming the variable, never a silent default.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from typing import Iterator, Mapping

BACKENDS = ("auto", "torch", "fla")
SSD_KERNELS = ("triton", "fla")
AUTOTUNE_MODES = ("full", "fast", "off")
DEFAULT_AUTOTUNE = "fast"  # its steady speed matched full's on the H200 (docs/gpu.md), for a quarter of the timing
ENVIRONMENT = {"backend": "STATEX_BACKEND", "ssd_kernel": "STATEX_SSD", "autotune": "STATEX_AUTOTUNE"}


@dataclass(frozen=True)
class KernelSettings:
    # auto: the fast kernels on CUDA, each falling back to torch (said once) on a shape or error it cannot take;
    # torch: the pure-torch ops everywhere; fla: the fast kernels, an error instead of any fallback
    backend: str = "auto"
    # Mamba2's chunked SSD on CUDA: triton (statex's own kernels) or fla (fla's chunk_gla, SSD as GLA)
    ssd_kernel: str = "triton"
    # Triton autotuning of fla's kernels on a cold cache (statex.runtime.autotune)
    autotune: str = DEFAULT_AUTOTUNE
    # sub-head limits for large heads (statex.ops.gla.split): fla's kernels are tuned for heads up to 256 x 512;
    # the chunked forward/backward takes 256 x 2048 (StateX's merged GLA head as 4 sub-heads, measured fastest)
    max_key_block: int = 256
    max_value_block: int = 512
    chunk_max_value_block: int = 2048

    def __post_init__(self):
        for name, choices in (("backend", BACKENDS), ("ssd_kernel", SSD_KERNELS), ("autotune", AUTOTUNE_MODES)):
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"{ENVIRONMENT[name]}={value!r} is not one of {', '.join(choices)}")
        for name in ("max_key_block", "max_value_block", "chunk_max_value_block"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 16 <= value <= 65536:
                raise ValueError(f"kernel setting {name} must be an integer in [16, 65536], got {value!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "KernelSettings":
        environ = os.environ if environ is None else environ
        return cls(**{field: environ[var] for field, var in ENVIRONMENT.items() if environ.get(var)})


_current: KernelSettings | None = None


def current() -> KernelSettings:
    """The settings in force (read from the environment on first use)."""
    global _current
    if _current is None:
        _current = KernelSettings.from_env()
    return _current


def configure(**changes) -> KernelSettings:
    """Change settings for the rest of this process; returns the new settings."""
    global _current
    _current = dataclasses.replace(current(), **changes)
    return _current


@contextlib.contextmanager
def use(**changes) -> Iterator[KernelSettings]:
    """Settings changed inside a ``with`` block only (tests and benchmarks use this instead of module globals)."""
    global _current
    before = current()
    _current = dataclasses.replace(before, **changes)
    try:
        yield _current
    finally:
        _current = before


def check_environment() -> None:
    """The environment's kernel variables valid, else a ValueError naming the bad one. The CLI calls this before
    any work, so a typo is an error up front whatever the device."""
    KernelSettings.from_env()
