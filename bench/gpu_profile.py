"""Where the GPU time of one benchmarked layer goes: torch.profiler over forward+backward steps of a layer case
of bench/gpu_bench.py, printing the kernels that take the most CUDA time.

    python -m bench.gpu_profile [--names statex-mamba2,statex-gla-statex] [--length 8192] [--tokens 65536]

Run it after gpu_bench.py has autotuned the same shapes (or restore its autotune results), so that the profile
holds steady-state steps and not Triton's compilation. Output: one table per case on stdout.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from bench import gpu_bench
from bench.registry import find


def profiled(step, steps: int):
    """torch.profiler's record (CUDA activity) of ``steps`` calls of step, after two calls outside it (they
    compile and autotune)."""
    for _ in range(2):
        step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    return prof


def profile_case(name: str, length: int, tokens: int, steps: int = 3, rows: int = 15) -> str:
    from statex import runtime

    case = find("layers", name)
    runtime.configure(**case.settings)
    torch.manual_seed(0)
    layer = gpu_bench.build_layer(case)[0].to("cuda", torch.bfloat16)
    prof = profiled(gpu_bench.layer_step(layer, max(1, tokens // length), length), steps)
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=70)
    return f"== {name} T={length}, {steps} steps of {tokens} tokens\n{table}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--names", default="statex-gla,statex-gla-statex,statex-mamba2,statex-mamba2-statex")
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--tokens", type=int, default=65536)
    parser.add_argument("--tune-ms", default="5,25", metavar="WARMUP,REP", help="as in gpu_bench.py")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("gpu_profile.py needs a CUDA GPU")
    os.environ.setdefault("STATEX_BACKEND", "fla")
    gpu_bench.shorten_autotuning(args.tune_ms)
    for name in [n for n in args.names.split(",") if n]:
        print(profile_case(name, args.length, args.tokens), flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
