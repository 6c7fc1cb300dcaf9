"""Compile every Triton kernel candidate a CUDA run will use, in parallel on the host's CPU cores, before the run
needs them; the run's own autotuning then only loads and times them (modes and cache: ``statex.runtime.autotune``).

How: W worker processes (default: one per CPU core less one, at most 16) each run the run's ``Workload`` (a
forward+backward, a forward, a decoding step of a model with the run's layer shapes, batch, length and
precision, but one layer per distinct layer spec and an 8-wide output head) with the autotuner patched so that
worker w compiles, without timing, the candidates i with i % W == w of every kernel, then runs the kernel with
the first of them that launches (``autotune.shard_compilation``). Triton writes every compiled kernel to the
shared cache directory, so the run finds all of them there. Workers never run the full model, so W of them fit
beside each other, and beside the run, on one GPU.

``start`` returns at once, so a run starts the workers as soon as it knows its shapes and builds its data and
model while they compile; ``Prewarm.wait`` blocks until they are done, printing progress. A marker file per
workload (``<triton cache>/statex-prewarm/<key>.json``, the key covering the workload and the versions of
Python, torch, Triton, fla and the GPU's name) records a completed prewarm, so it is not repeated; the last
prewarm's worker logs stay in ``statex-prewarm/logs/``.

    prewarm = start(work)            # None: this workload was prewarmed before; start([w1, w2]) for several
    ...                              # data, model, optimizer
    prewarm and prewarm.wait()
"""
from __future__ import annotations

import gc
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from statex.runtime import autotune

DEFAULT_LIMIT_S = 300.0
REPORT_EVERY_S = 10.0
OOM_RETRIES = 30  # per worker, each after a pause that grows
_NOT_SHAPES = ("history", "initializer_range", "bos_token_id", "eos_token_id", "pad_token_id")


@dataclass
class Workload:
    """What a run will execute on the GPU, in the run's exact shapes: ``model`` is a ModelConfig as a dict."""

    model: dict[str, Any]
    batch: int
    seq_len: int
    train: bool = False  # forward + backward (bf16 autocast when precision is bf16)
    forward: bool = False  # forward without grad (evaluation, prefill)
    decode_batch: int = 0  # > 0: one decoding step at this batch
    carried_state: bool = False  # forward: also a piece from a carried state (evaluation, prefill in pieces)
    precision: str = "bf16"  # fp32 | bf16 | pure-bf16 (as the trainer's precision)
    extra: dict[str, Any] = field(default_factory=dict)

    def key(self) -> str:
        """What the compiled kernels depend on: the distinct layer shapes, not the config's history or ids."""
        shapes = {k: v for k, v in distinct_layers(self.model).items() if k not in _NOT_SHAPES}
        text = json.dumps({"workload": {**asdict(self), "model": shapes}, "versions": _software_versions(),
                           "passes": PASSES_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:20]


PASSES_VERSION = 3  # raised when run_workload's passes change, so that older markers no longer skip a prewarm


def _software_versions() -> dict[str, str]:
    """What the compiled kernels depend on: the package versions and the GPU's name (CUDA is initialised by then)."""
    from statex.runtime import machine

    name = machine.gpu_name()
    return {**machine.software_versions(), **({"gpu": name} if name else {})}


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

    from statex.config import ModelConfig
    from statex.models import build_model

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
        inference_passes(model, ids, work.forward, work.decode_batch, work.carried_state)
    torch.cuda.synchronize()


def inference_passes(model, ids, forward: bool, decode_batch: int, carried_state: bool = True) -> None:
    """The forward passes of evaluation and generation, on ``ids`` [B, T]: a prompt's first piece (no initial
    state) and, with ``carried_state``, a later piece (the state carried in; the kernels take an initial state
    only then, and Triton compiles that variant separately: evaluation's 4,096-token prompts read in
    2,048-token pieces compiled it themselves, one candidate after another, before this pass existed), then a
    decoding step at ``decode_batch`` rows. Training never carries a state, so its workloads skip that piece."""
    if forward:
        first = model(ids, use_cache=True)
        if carried_state:
            model(ids, state=first.state, use_cache=True)
    if decode_batch:
        out = model(ids[:decode_batch, :16], use_cache=True)
        model(out.logits[:, -1:].argmax(-1), state=out.state)


def forward_workloads(model: dict[str, Any], batch: int, seq_len: int, decode: bool,
                      precision: str = "fp32") -> list[Workload]:
    """The workloads of evaluation or generation, whose prompts come in any length: Triton compiles separate
    variants for integer arguments (row counts, lengths) divisible by 16 and for the others, so one workload at
    a length divisible by 16 (with the decoding step) and one at a length that is not."""
    aligned = max(32, seq_len - seq_len % 16)
    return [Workload(model, batch, aligned, forward=True, decode_batch=batch if decode else 0, precision=precision,
                     carried_state=True),
            Workload(model, batch, aligned - 1, forward=True, precision=precision, carried_state=True)]


def _marker(work: Workload) -> Path:
    return autotune.triton_cache_dir() / "statex-prewarm" / f"{work.key()}.json"


def cache_entries(cache: Path) -> int:
    """Entries of a Triton cache directory (one per compiled kernel variant or stored tuning result)."""
    return sum(1 for _ in cache.iterdir()) if cache.is_dir() else 0


class WorkerProcesses:
    """One process per command, output to ``log_dir/worker<i>.log``; ``wait`` reports progress and stops those
    still running at the time limit (counted from the start)."""

    def __init__(self, commands: list[list[str]], log_dir: Path, env: dict[str, str]):
        log_dir.mkdir(parents=True, exist_ok=True)
        self.started, self.procs = time.time(), []
        for index, args in enumerate(commands):
            log = open(log_dir / f"worker{index}.log", "w")
            self.procs.append((subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env), log))

    def running(self) -> int:
        return sum(p.poll() is None for p, _ in self.procs)

    def wait(self, limit_s: float, report=None, every_s: float = REPORT_EVERY_S) -> list[int | None]:
        """Block until all have exited or ``limit_s`` has passed since the start, calling ``report(running,
        elapsed)`` every ``every_s`` seconds. Returns each exit code (None: stopped at the limit)."""
        last = 0.0
        while self.running() and time.time() - self.started < limit_s:
            time.sleep(0.2)
            if report is not None and time.time() - last >= every_s:
                last = time.time()
                report(self.running(), time.time() - self.started)
        codes = []
        for p, log in self.procs:
            killed = p.poll() is None
            if killed:
                p.kill()
            p.wait()
            log.close()
            codes.append(None if killed else p.returncode)
        return codes


def run_worker_processes(commands: list[list[str]], log_dir: Path, env: dict[str, str], limit_s: float,
                         report=None, every_s: float = REPORT_EVERY_S) -> list[int | None]:
    """``WorkerProcesses(commands, log_dir, env).wait(limit_s, report, every_s)`` (bench/triton_prewarm.py)."""
    return WorkerProcesses(commands, log_dir, env).wait(limit_s, report, every_s)


class Prewarm:
    """The workers of one workload's prewarm, running in the background (``start`` makes one)."""

    def __init__(self, works: list[Workload], workers: int, progress: bool, worker_command: list[str] | None):
        self.works, self.workers, self.progress = works, workers, progress
        self.cache = autotune.triton_cache_dir()
        self.cache.mkdir(parents=True, exist_ok=True)
        self.before, self.logs = cache_entries(self.cache), self.cache / "statex-prewarm" / "logs"
        self._tmp = tempfile.TemporaryDirectory(prefix="statex-prewarm-")  # the spec, read by every worker
        spec = Path(self._tmp.name) / "workload.json"
        spec.write_text(json.dumps([asdict(work) for work in works]))
        command = worker_command or [sys.executable, "-m", "statex.runtime.prewarm"]
        env = {**os.environ, "TRITON_CACHE_DIR": str(self.cache), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
               "FLA_CACHE_RESULTS": "0",  # a worker times nothing: it must store no autotuning result
               "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")}
        if progress:
            print(f"[autotune] compiling the Triton kernels of {len(works)} workload(s) in {workers} processes "
                  f"(once per shape; cache {self.cache})", flush=True)
        self.processes = WorkerProcesses(
            [[*command, "--index", str(i), "--count", str(workers), "--spec", str(spec)] for i in range(workers)],
            self.logs, env)

    def wait(self, limit_s: float = DEFAULT_LIMIT_S) -> dict[str, Any]:
        """Block until every worker is done (or stopped at ``limit_s`` seconds from the start); write the
        marker when all succeeded. Returns {"skipped", "workers", "seconds", "new_cache_entries", "stopped",
        "failed"}."""
        def report(running: int, elapsed: float) -> None:
            if self.progress:
                print(f"[autotune] compiling Triton kernels: {running}/{self.workers} workers, "
                      f"{cache_entries(self.cache) - self.before} new cache entries, {elapsed:.0f} s", flush=True)

        try:
            _import_kernels()
            codes = self.processes.wait(limit_s, report)
        finally:
            self._tmp.cleanup()
        stopped = [i for i, code in enumerate(codes) if code is None]
        failed = [(i, (self.logs / f"worker{i}.log").read_text()[-400:]) for i, code in enumerate(codes)
                  if code not in (0, None)]
        summary = {"skipped": False, "workers": self.workers,
                   "seconds": round(time.time() - self.processes.started, 1),
                   "new_cache_entries": cache_entries(self.cache) - self.before, "stopped": len(stopped),
                   "failed": len(failed)}
        if failed:
            print(f"[autotune] {len(failed)} prewarm worker(s) failed; the run compiles what they left. Last lines "
                  f"of worker {failed[0][0]} ({self.logs}): {failed[0][1]}", flush=True)
        if stopped:
            print(f"[autotune] {len(stopped)} worker(s) still compiling at the {limit_s:.0f} s limit were stopped; "
                  f"the run compiles what they left (logs in {self.logs})", flush=True)
        if not stopped and not failed:
            for work in self.works:
                marker = _marker(work)
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(json.dumps({**summary, "workload": asdict(work)}) + "\n")
        if self.progress or failed or stopped:
            print(f"[autotune] prewarm done in {summary['seconds']:.0f} s ({self.workers} workers, "
                  f"{summary['new_cache_entries']} new cache entries)", flush=True)
        return summary


def _import_kernels() -> None:
    """Import fla in this process while the workers compile: the run needs it next, and importing its ops takes
    about 11 s (H200 machine, 2026-12-02), which would otherwise come after the prewarm."""
    from statex.runtime import dispatch

    dispatch.fla_available()


def start(work: Workload | list[Workload], workers: int | None = None, progress: bool = True,
          worker_command: list[str] | None = None) -> Prewarm | None:
    """Start compiling the kernels of ``work`` (one workload or several, which the workers then run one after
    the other: one start-up for all) in the background; None when the cache already holds the prewarm of every
    one. ``worker_command``: the command running one worker (tests use a stand-in); it gets ``--index I --count
    W --spec FILE`` appended."""
    works = [work] if isinstance(work, Workload) else list(work)
    todo = list({w.key(): w for w in works if not _marker(w).is_file()}.values())
    if not todo:
        return None
    return Prewarm(todo, workers or max(1, min(16, (os.cpu_count() or 2) - 1)), progress, worker_command)


def prewarm(work: Workload | list[Workload], workers: int | None = None, limit_s: float = DEFAULT_LIMIT_S, progress: bool = True,
            worker_command: list[str] | None = None) -> dict[str, Any]:
    """``start`` and ``wait``: compile every candidate ``work`` needs; returns the summary of ``Prewarm.wait``
    ({"skipped": True, ...} when the cache already had them)."""
    handle = start(work, workers, progress, worker_command)
    if handle is None:
        return {"skipped": True, "workers": 0, "seconds": 0.0, "new_cache_entries": 0, "stopped": 0, "failed": 0}
    return handle.wait(limit_s)


def begin(work: Workload | list[Workload], mode: str | None = None, progress: bool = True, **start_options) -> Prewarm | None:
    """What a statex command calls on CUDA as soon as it knows ``work``: apply the autotuning ``mode``, then
    (modes full and fast) start the prewarm unless the cache already has it. Wait on the result (if not None)
    before the first kernel runs."""
    if autotune.configure(mode) == "off":
        return None
    return start(work, progress=progress, **start_options)


def prepare(work: Workload | list[Workload], mode: str | None = None, progress: bool = True,
            limit_s: float = DEFAULT_LIMIT_S, **start_options) -> str:
    """``begin`` and wait (at most ``limit_s``): the kernels of ``work`` ready under ``mode``. Returns the mode
    applied."""
    handle = begin(work, mode, progress, **start_options)
    if handle is not None:
        handle.wait(limit_s)
    return autotune.resolve_mode(mode)


def _attempt_workload(work: Workload, last: bool) -> bool:
    """Run ``work``; False (its memory freed) when the GPU ran out of memory and this is not the ``last`` try.

    W workers at the run's batch can outgrow the GPU together (GLA-1.3B at 16K tokens: 4 of 15 did). Freed
    memory lets the others go on; kernels compiled so far stay cached, so a retry resumes where this one stopped,
    and the run compiles whatever a worker that gives up leaves."""
    import torch

    try:
        run_workload(work)
        return True
    except torch.OutOfMemoryError:
        if last:
            raise
    gc.collect()  # the failed attempt's tensors, now that its traceback is gone
    torch.cuda.empty_cache()
    return False


def _worker_main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m statex.runtime.prewarm")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--spec", required=True)
    args = parser.parse_args(argv)
    started = time.time()
    works = [Workload(**spec) for spec in json.loads(Path(args.spec).read_text())]
    autotune.shard_compilation(args.index, args.count)
    import torch  # timed apart from the compilation, to show where a worker's time goes

    from statex.runtime import dispatch

    dispatch.fla_available()
    torch.cuda.init()
    print(f"worker {args.index}/{args.count}: imports and CUDA {time.time() - started:.1f} s", flush=True)
    for number, work in enumerate(works, 1):
        for attempt in range(1, OOM_RETRIES + 1):
            if _attempt_workload(work, last=attempt == OOM_RETRIES):
                break
            pause = 1.0 + random.random() * 2.0 * attempt
            print(f"worker {args.index}/{args.count}: out of GPU memory beside the other workers; again in "
                  f"{pause:.1f} s (attempt {attempt + 1} of {OOM_RETRIES})", flush=True)
            time.sleep(pause)
        torch.cuda.empty_cache()
        print(f"worker {args.index}/{args.count}: workload {number} of {len(works)} at "
              f"{time.time() - started:.1f} s", flush=True)
    print(f"worker {args.index}/{args.count}: done in {time.time() - started:.1f} s", flush=True)


def prepare_for_models(configs, autotune_mode: str | None, device, batch: int, seq_len: int, decode: bool) -> None:
    """What ``statex generate`` and ``statex eval`` do before their models run: on CUDA, the Triton kernels of these
    models' forward (and decode) shapes compiled in parallel, once for all of them; nothing elsewhere."""
    if device.type != "cuda":
        return
    prepare([work for config in configs for work in forward_workloads(config.to_dict(), batch, seq_len, decode)],
            autotune_mode)


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
