"""Triton autotuning on a machine without a warm cache: compile every candidate in parallel before the run needs
it, keep the chosen configs in a cache directory that later runs reuse, and choose how candidates are timed.

Why: fla's kernels autotune over up to 24 candidate configs each; Triton compiles a candidate on its first use,
one after another, inside the one process that also trains. On a fresh H200 the mid-scale GLA recipe had not
reached step 5 after 400 s, all of it compilation.

Modes (``--autotune`` on ``statex train``, ``eval`` and ``generate``; ``STATEX_AUTOTUNE`` mirrors it):
  fast  (default) every candidate compiled (in parallel, beforehand) and timed 5 + 25 ms: the choice may differ
        from full's only where candidates are within timing noise of each other
  full  Triton's own autotuning: every candidate compiled (here in parallel, beforehand) and timed 25 + 100 ms
  off   no autotuning: each kernel runs the first candidate that survives its own pruning, one compile each

No mode changes what a kernel computes: every candidate computes the same function (configs differ in block
sizes, warps and pipeline stages, hence only in the rounding of their reductions); the GPU tests check each mode
against the torch ops.

Cache: Triton's cache directory is ``STATEX_CACHE_DIR/triton`` (default ``~/.cache/statex/triton``) for statex
processes, unless ``TRITON_CACHE_DIR`` is set. Compiled kernels live there, and so do the autotuning results
(fla asks Triton to store them: ``FLA_CACHE_RESULTS``, on by default), so a later run with the same shapes on the
same GPU and software loads the winners and compiles and times nothing else. A marker file per workload records
that its prewarm has run, so it is not repeated (``statex.runtime.prewarm``).

Compiling every candidate beforehand, in parallel: ``statex.runtime.prewarm`` (its worker processes use
``shard_compilation`` below).

The patches apply to Triton's ``Autotuner`` class inside statex processes only (the CLI, or code calling
``configure``); nothing outside them changes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from statex.runtime.settings import AUTOTUNE_MODES as MODES
from statex.runtime.settings import current

FAST_TIMING_MS = (5, 25)  # warmup, rep per candidate in mode fast (Triton's defaults: 25, 100)
_applied: dict[str, Any] = {}  # what configure() has patched in this process


def cache_root() -> Path:
    return Path(os.environ.get("STATEX_CACHE_DIR") or Path.home() / ".cache" / "statex")


def triton_cache_dir() -> Path:
    return Path(os.environ.get("TRITON_CACHE_DIR") or cache_root() / "triton")


def resolve_mode(mode: str | None) -> str:
    """``mode``, else the settings' (STATEX_AUTOTUNE, default fast)."""
    if mode is None:
        return current().autotune
    if mode not in MODES:
        raise ValueError(f"autotune mode {mode!r} is not one of {', '.join(MODES)}")
    return mode


def configure(mode: str | None = None, autotuner_class=None) -> str:
    """Point Triton at statex's cache directory and apply ``mode`` (see the module docstring) to every Triton
    autotuner of this process. Call before the first kernel runs. Returns the mode applied.
    ``autotuner_class``: the class to patch (Triton's ``Autotuner`` by default; tests pass a stand-in)."""
    mode = resolve_mode(mode)
    os.environ.setdefault("TRITON_CACHE_DIR", str(triton_cache_dir()))
    Path(os.environ["TRITON_CACHE_DIR"]).mkdir(parents=True, exist_ok=True)
    if autotuner_class is None:
        try:
            from triton.runtime.autotuner import Autotuner as autotuner_class
        except ImportError:  # no Triton: nothing to tune
            return mode
    _restore(autotuner_class)
    if mode == "fast":
        _patch_timing(autotuner_class, *FAST_TIMING_MS)
    elif mode == "off":
        _patch_first_candidate(autotuner_class)
    _applied["mode"] = mode
    return mode


def set_timing(warmup_ms: int, rep_ms: int, autotuner_class=None) -> None:
    """Time every autotuning candidate for ``warmup_ms`` + ``rep_ms`` (mode fast uses ``FAST_TIMING_MS``)."""
    if autotuner_class is None:
        from triton.runtime.autotuner import Autotuner as autotuner_class
    _patch_timing(autotuner_class, warmup_ms, rep_ms)


def _restore(cls) -> None:
    for name, original in _applied.pop(id(cls), {}).items():
        setattr(cls, name, original)


def _remember(cls, name: str) -> None:
    _applied.setdefault(id(cls), {}).setdefault(name, cls.__dict__.get(name, getattr(cls, name)))


def _patch_timing(cls, warmup_ms: int, rep_ms: int) -> None:
    """Every autotuner without a benchmarker of its own times candidates for warmup_ms + rep_ms."""
    _remember(cls, "do_bench")

    def short_bench(kernel_call, quantiles=None):
        import triton.testing

        return triton.testing.do_bench(kernel_call, warmup=warmup_ms, rep=rep_ms, quantiles=quantiles)

    def do_bench(self):
        return self._do_bench if getattr(self, "_do_bench", None) is not None else short_bench

    cls.do_bench = property(do_bench)


def _patch_first_candidate(cls) -> None:
    """Pruning keeps only the first surviving candidate, so nothing is timed and one config compiles."""
    _remember(cls, "prune_configs")
    original = _applied[id(cls)]["prune_configs"]

    def prune_configs(self, kwargs):
        return original(self, kwargs)[:1]

    cls.prune_configs = prune_configs


def shard_compilation(index: int, count: int, autotuner_class=None) -> None:
    """Prewarm worker ``index`` of ``count``: every autotuner compiles (without timing) its candidates
    index, index + count, ... and runs the kernel with the first of them."""
    if autotuner_class is None:
        from triton.runtime.autotuner import Autotuner as autotuner_class
    _remember(autotuner_class, "run")
    original_run = _applied[id(autotuner_class)]["run"]

    def run(self, *args, **kwargs):
        if len(self.configs) <= 1:
            return original_run(self, *args, **kwargs)
        self.nargs = nargs = dict(zip(self.arg_names, args))
        candidates = self.prune_configs(kwargs)
        mine = candidates[index::count] or [candidates[index % len(candidates)]]
        # A launch arrives as kernel[grid](...), which passes grid= and warmup=False on to the autotuner's run;
        # compiling without launching replaces that warmup flag.
        compile_only = {name: value for name, value in kwargs.items() if name != "warmup"}
        for config in mine:
            try:
                self.fn.run(*args, **compile_only, **config.all_kwargs(), warmup=True)
            except Exception as exc:  # out of resources etc.: the real autotuner skips such configs too
                print(f"autotune prewarm: {type(exc).__name__} compiling a candidate: {str(exc)[:200]}", flush=True)
        self.nargs = None
        for config in mine:  # the first of them that launches (one may exceed the GPU's shared memory)
            if config.pre_hook is not None:
                config.pre_hook({**nargs, **kwargs, **config.all_kwargs()})
            try:
                return self.fn.run(*args, **kwargs, **config.all_kwargs())
            except Exception as exc:  # noqa: BLE001 - e.g. triton's OutOfResources
                print(f"autotune prewarm: {type(exc).__name__} launching a candidate; trying the next", flush=True)
        return original_run(self, *args, **kwargs)

    autotuner_class.run = run
