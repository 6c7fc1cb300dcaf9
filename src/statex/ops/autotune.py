"""Triton autotuning on a machine without a warm cache: compile every candidate in parallel before the run needs
it, keep the chosen configs in a cache directory that later runs reuse, and choose how candidates are timed.

Why: fla's kernels autotune over up to 24 candidate configs each; Triton compiles a candidate on its first use,
one after another, inside the one process that also trains. On a fresh H200 the mid-scale GLA recipe had not
reached step 5 after 400 s, all of it compilation (../shared/GPU_NOTES.md).

Modes (``--autotune`` on ``statex train``, ``eval`` and ``generate``; ``STATEX_AUTOTUNE`` mirrors it):
  full  Triton's own autotuning: every candidate compiled (here in parallel, beforehand) and timed 25 + 100 ms
  fast  every candidate compiled (in parallel, beforehand) and timed 5 + 25 ms: the choice may differ only where
        candidates are within timing noise of each other
  off   no autotuning: each kernel runs the first candidate that survives its own pruning, one compile each

No mode changes what a kernel computes: every candidate computes the same function (configs differ in block
sizes, warps and pipeline stages, hence only in the rounding of their reductions); the GPU tests check each mode
against the torch ops.

Cache: Triton's cache directory is ``STATEX_CACHE_DIR/triton`` (default ``~/.cache/statex/triton``) for statex
processes, unless ``TRITON_CACHE_DIR`` is set. Compiled kernels live there, and so do the autotuning results
(fla asks Triton to store them: ``FLA_CACHE_RESULTS``, on by default), so a later run with the same shapes on the
same GPU and software loads the winners and compiles and times nothing else. A marker file per workload records
that its prewarm has run, so it is not repeated.

Prewarm: ``prewarm(spec)`` starts W worker processes (default: one per CPU core less one, at most 16). Each runs
the workload of ``spec`` (a forward+backward, a forward, a decoding step of a model with the run's layer shapes,
batch, length and precision, but one layer per distinct layer shape) with the autotuner patched so that worker w
compiles, without timing, the candidates i with i % W == w of every kernel, then runs the kernel with the first
of them. The run that follows finds every candidate compiled on disk. Workers never run the full model, so W of
them fit beside each other on one GPU.

The patches apply to Triton's ``Autotuner`` class inside statex processes only (the CLI, or code calling
``configure``); nothing outside them changes.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MODES = ("full", "fast", "off")
FAST_TIMING_MS = (5, 25)  # warmup, rep per candidate in mode fast (Triton's defaults: 25, 100)
DEFAULT_LIMIT_S = 300.0
_applied: dict[str, Any] = {}  # what configure() has patched in this process


def cache_root() -> Path:
    return Path(os.environ.get("STATEX_CACHE_DIR") or Path.home() / ".cache" / "statex")


def triton_cache_dir() -> Path:
    return Path(os.environ.get("TRITON_CACHE_DIR") or cache_root() / "triton")


def resolve_mode(mode: str | None) -> str:
    mode = mode or os.environ.get("STATEX_AUTOTUNE") or "full"
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


# ---- the workload a run will execute, and its parallel compilation -------------------------------------------


@dataclass
class Workload:
    """What a run will execute on the GPU, in the run's exact shapes: ``model`` is a ModelConfig as a dict."""

    model: dict[str, Any]
    batch: int
    seq_len: int
    train: bool = False  # forward + backward (bf16 autocast when precision is bf16)
    forward: bool = False  # forward without grad (evaluation, prefill)
    decode_batch: int = 0  # > 0: one decoding step at this batch
    precision: str = "bf16"  # fp32 | bf16 | pure-bf16 (as the trainer's precision)
    extra: dict[str, Any] = field(default_factory=dict)

    def key(self) -> str:
        versions = _software_versions()
        text = json.dumps({"workload": asdict(self), "versions": versions}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:20]


def _software_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in ("torch", "triton", "fla"):
        try:
            versions[name] = getattr(__import__(name), "__version__", "?")
        except ImportError:
            versions[name] = "-"
    try:
        import torch

        if torch.cuda.is_available():
            versions["gpu"] = torch.cuda.get_device_name()
    except Exception:  # noqa: BLE001 - the name is only part of a cache key
        pass
    return versions


def distinct_layers(model: dict[str, Any]) -> dict[str, Any]:
    """The model config with one layer per distinct layer spec (same order of first appearance): what the
    workers compile for. Every layer with the same spec runs the same kernels with the same shapes."""
    seen, layers = set(), []
    for spec in model["layers"]:
        text = json.dumps(spec, sort_keys=True)
        if text not in seen:
            seen.add(text)
            layers.append(spec)
    return {**model, "layers": layers, "n_layer": len(layers)} if "n_layer" in model else {**model, "layers": layers}


def run_workload(work: Workload) -> None:
    """Execute ``work`` once on the GPU, on a model with one layer per distinct layer spec.

    The run's exact batch and length (Triton compiles separate variants for integer arguments equal to 1 or
    divisible by 16, so a smaller batch would compile other kernels than the run uses), but with a tiny output
    head: the vocabulary-sized logits are cuBLAS work, not Triton's, and at the run's batch they are what ran 15
    workers out of GPU memory."""
    import torch

    from statex import ModelConfig, build_model

    config = ModelConfig.from_dict(distinct_layers(work.model))
    dtype = torch.bfloat16 if work.precision == "pure-bf16" else torch.float32
    model = build_model(config, device="cuda", seed=0).to(dtype)
    model.lm_head = torch.nn.Linear(config.d_model, 8, bias=False, device="cuda", dtype=dtype)
    ids = torch.randint(0, config.vocab_size, (work.batch, work.seq_len), device="cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=work.precision == "bf16")
    if work.train:
        model.train()
        with autocast:
            loss = model(ids).logits.float().square().mean()
        loss.backward()
        model.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad(), autocast:
        if work.forward:
            model(ids)
        if work.decode_batch:
            out = model(ids[:work.decode_batch, :16], use_cache=True)
            model(out.logits[:, -1:].argmax(-1), state=out.state)
    torch.cuda.synchronize()


def _marker(work: Workload) -> Path:
    return triton_cache_dir() / "statex-prewarm" / f"{work.key()}.json"


def prewarm(work: Workload, workers: int | None = None, limit_s: float = DEFAULT_LIMIT_S,
            progress: bool = True, worker_command: list[str] | None = None) -> dict[str, Any]:
    """Compile every Triton kernel candidate ``work`` needs, in ``workers`` processes at once (see the module
    docstring). Skipped when the cache already holds this workload's prewarm. Returns a summary
    {"skipped", "workers", "seconds", "new_cache_entries", "stopped"}. ``worker_command``: the command that
    runs one worker (tests use a stand-in); it gets ``--index I --count W --spec FILE`` appended."""
    marker = _marker(work)
    if marker.is_file():
        return {"skipped": True, "workers": 0, "seconds": 0.0, "new_cache_entries": 0, "stopped": 0}
    workers = workers or max(1, min(16, (os.cpu_count() or 2) - 1))
    cache = triton_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    before, started = _entries(cache), time.time()
    command = worker_command or [sys.executable, "-m", "statex.ops.autotune"]
    env = {**os.environ, "TRITON_CACHE_DIR": str(cache), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           "FLA_CACHE_RESULTS": "0"}  # a worker times nothing: it must store no autotuning result
    print(f"[autotune] compiling the Triton kernels of this run in {workers} processes (once per shape; cache "
          f"{cache})", flush=True)
    logs = cache / "statex-prewarm" / "logs"  # the last prewarm's worker logs, for diagnosis
    with tempfile.TemporaryDirectory(prefix="statex-prewarm-") as tmp:
        spec = Path(tmp) / "workload.json"
        spec.write_text(json.dumps(asdict(work)))
        commands = [[*command, "--index", str(index), "--count", str(workers), "--spec", str(spec)]
                    for index in range(workers)]

        def report(running: int, elapsed: float) -> None:
            if progress:
                print(f"[autotune] compiling Triton kernels: {running}/{workers} workers, "
                      f"{_entries(cache) - before} new cache entries, {elapsed:.0f} s", flush=True)

        codes = run_worker_processes(commands, logs, env, limit_s, report)
    stopped = [i for i, code in enumerate(codes) if code is None]
    failed = [(i, (logs / f"worker{i}.log").read_text()[-400:]) for i, code in enumerate(codes)
              if code not in (0, None)]
    summary = {"skipped": False, "workers": workers, "seconds": round(time.time() - started, 1),
               "new_cache_entries": _entries(cache) - before, "stopped": len(stopped), "failed": len(failed)}
    if failed:
        print(f"[autotune] {len(failed)} prewarm worker(s) failed; the run compiles what they left. Last lines of "
              f"worker {failed[0][0]} ({logs}): {failed[0][1]}", flush=True)
    if stopped:
        print(f"[autotune] {len(stopped)} worker(s) still compiling at the {limit_s:.0f} s limit were stopped; the "
              f"run compiles what they left (logs in {logs})", flush=True)
    if not stopped and not failed:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({**summary, "workload": asdict(work)}) + "\n")
    print(f"[autotune] prewarm done in {summary['seconds']:.0f} s ({workers} workers, "
          f"{summary['new_cache_entries']} new cache entries)", flush=True)
    return summary


def run_worker_processes(commands: list[list[str]], log_dir: Path, env: dict[str, str], limit_s: float,
                         report=None, every_s: float = 10.0) -> list[int | None]:
    """Start one process per command (output to ``log_dir/worker<i>.log``), call ``report(running, elapsed)``
    every ``every_s`` seconds, kill those still running at ``limit_s``. Returns each exit code (None: killed)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    started, procs = time.time(), []
    for index, args in enumerate(commands):
        log = open(log_dir / f"worker{index}.log", "w")
        procs.append((subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env), log))
    last = 0.0
    while any(p.poll() is None for p, _ in procs) and time.time() - started < limit_s:
        time.sleep(0.2)
        if report is not None and time.time() - last >= every_s:
            last = time.time()
            report(sum(p.poll() is None for p, _ in procs), time.time() - started)
    codes = []
    for p, log in procs:
        killed = p.poll() is None
        if killed:
            p.kill()
        p.wait()
        log.close()
        codes.append(None if killed else p.returncode)
    return codes


def _entries(cache: Path) -> int:
    return sum(1 for _ in cache.iterdir()) if cache.is_dir() else 0


def prepare(work: Workload, mode: str | None = None, progress: bool = True, **prewarm_options) -> str:
    """What a statex command calls before running ``work`` on CUDA: configure the mode, then (modes full and
    fast) compile every candidate in parallel unless the cache already has them. Returns the mode."""
    mode = configure(mode)
    if mode != "off":
        prewarm(work, progress=progress, **prewarm_options)
    return mode


def _worker_main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m statex.ops.autotune")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--spec", required=True)
    args = parser.parse_args(argv)
    started = time.time()
    work = Workload(**json.loads(Path(args.spec).read_text()))
    shard_compilation(args.index, args.count)
    print(f"worker {args.index}/{args.count}: imports {time.time() - started:.1f} s", flush=True)
    run_workload(work)
    print(f"worker {args.index}/{args.count}: done in {time.time() - started:.1f} s", flush=True)


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
