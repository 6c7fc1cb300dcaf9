"""Compile, on many CPU cores at once, every Triton kernel a GPU session is about to use.

    python -m bench.triton_prewarm [--workers 15] [--parts tests,layers,models] [--limit 300]
        [--tests-k EXPR] [--only CASE,...]

Why: fla's kernels autotune over up to 24 configs each, and Triton compiles each config on its first use,
one after another, in one process. On the H200 machine a first forward+backward of one head shape took more
than 110 s that way, longer than the time a GPU session can give it.

How: W worker processes run the same workload that the session will run (the CUDA tests; forward+backward
of every benchmarked layer; a two-layer version of every benchmarked model,
trained one step and decoding one token). In the workers Triton's autotuner is patched: on every kernel call
worker w only *compiles* the candidate configs i with i % W == w (without timing them) and runs the kernel
with the first of those. Triton writes every compiled kernel to its on-disk cache (~/.triton/cache), so
together the workers put every candidate of every kernel specialisation there; the tests and benchmarks
that follow run unpatched, and their autotuning only loads and times the candidates.

The patch is statex's own (statex.runtime.autotune.shard_compilation, the mechanism of statex.runtime.prewarm that `statex
train` uses before its first step); it applies inside the worker processes only.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Triton specialises integer arguments (==1, %16==0, neither); fla's recurrence kernels take only T as a
# runtime integer and mark it do_not_specialize, so the batch and length here only need to be small. Two
# batch sizes cover kernels elsewhere (norms) that take a row count.
LAYER_BATCHES = (1, 2)
LAYER_LENGTH = 2048
PARTS = ("tests", "layers", "models")


def workload(parts: list[str], tests_k: str = "", only: list[str] | None = None) -> None:
    import torch

    from bench import gpu_bench
    from bench.registry import select
    from statex import runtime

    def stage(name, fn):
        started = time.time()
        try:
            fn()
            print(f"{name}: done in {time.time() - started:.0f} s", flush=True)
        except Exception as exc:  # keep warming the rest
            print(f"{name}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
        torch.cuda.empty_cache()

    if "tests" in parts:
        import pytest

        selection = ["-k", tests_k] if tests_k else []
        stage("tests", lambda: pytest.main(["-q", "-p", "no:cacheprovider", *selection,
                                            "-m", "cuda", str(ROOT / "tests")]))
    if "layers" in parts:
        for case in select(["layers"], only):
            def layer_case(case=case):
                runtime.configure(**case.settings)
                layer = gpu_bench.build_layer(case)[0].to("cuda", torch.bfloat16)
                for batch in LAYER_BATCHES:
                    gpu_bench.layer_step(layer, batch, LAYER_LENGTH)()
            stage(f"layer {case.name}", layer_case)
    if "models" in parts:
        # a decode case shares its model with the model case of the same name: warm each model once
        cases = {case.name: case for case in select(["decode", "model"], only)}
        for name, case in cases.items():
            def model_case(case=case):
                runtime.configure(**case.settings)
                model = gpu_bench.build_model(case, n_layer=2)
                gpu_bench.train_step(model.train(), batch=2)()
                model = model.to(torch.bfloat16).eval()
                for batch in gpu_bench.DECODE_BATCHES:
                    gpu_bench.decode_step(model, batch)()  # the graph variant replays these same kernels
            stage(f"model {name}", model_case)


def cache_entries() -> int:
    cache = Path(os.environ.get("TRITON_CACHE_DIR", Path.home() / ".triton" / "cache"))
    return sum(1 for _ in cache.iterdir()) if cache.is_dir() else 0


def drive(args) -> int:
    """Start the workers, report progress, stop them at the time limit (statex's own worker driver)."""
    from statex.runtime.prewarm import run_worker_processes

    started, before = time.time(), cache_entries()
    logs = Path(args.log_dir)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "STATEX_BACKEND": "fla"}
    commands = [[sys.executable, "-m", "bench.triton_prewarm", "--worker", f"{index}/{args.workers}", "--parts", ",".join(args.parts),
                 "--tests-k", args.tests_k, "--only", ",".join(args.only)] for index in range(args.workers)]

    def report(running: int, elapsed: float) -> None:
        print(f"[{elapsed:4.0f} s] {running} of {args.workers} workers running, "
              f"{cache_entries() - before} new Triton cache entries", flush=True)

    codes = run_worker_processes(commands, logs, env, args.limit, report)
    stopped = [code for code in codes if code is None]
    print(f"prewarm: {time.time() - started:.0f} s, {cache_entries() - before} new cache entries, "
          f"{len(stopped)} workers stopped at the {args.limit} s limit", flush=True)
    return 1 if stopped else 0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--limit", type=float, default=300, help="seconds before the workers are stopped")
    parser.add_argument("--log-dir", default="out/prewarm")
    parser.add_argument("--tests-k", default="", help="pytest -k expression selecting the CUDA tests to warm")
    parser.add_argument("--only", default="", help="benchmark case names to warm (bench/registry.py; gpu_bench --only)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # index/count, set by the driver
    args = parser.parse_args(argv)
    args.parts = [p for p in args.parts.split(",") if p]
    args.only = [x for x in args.only.split(",") if x]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        sys.exit(f"triton_prewarm.py: unknown part(s) {', '.join(unknown)} (choose from {', '.join(PARTS)})")
    if args.worker:
        index, count = (int(x) for x in args.worker.split("/"))
        os.environ["FLA_CACHE_RESULTS"] = "0"  # a worker's timings cover only its shard: never store them
        from statex.runtime.autotune import shard_compilation

        shard_compilation(index, count)
        workload(args.parts, args.tests_k, args.only)
        return
    sys.exit(drive(args))


if __name__ == "__main__":
    main()
