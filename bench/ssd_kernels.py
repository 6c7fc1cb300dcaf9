"""Where the time of statex's own SSD kernels goes, and which num_warps each kernel should launch with.

    python -m bench.ssd_kernels [--out DIR] [--warps 2,4,8] [--tokens 65536] [--length 8192]

For Mamba2-1.3B's SSD shape (64 heads x headdim 64, ngroups 1) at d_state 128 and StateX's 512: forward+backward
of ``statex.ops.ssd.triton_chunk.chunk_ssd_triton`` on bf16 inputs under torch.profiler, once per num_warps
setting (every kernel launched with it), printing each kernel's CUDA time per step. The chosen settings go into
``triton_chunk.WARPS``; the table goes into docs/benchmarks.md. Writes DIR/ssd_kernels.jsonl.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.gpu_profile import profiled
from statex.ops.ssd import triton_chunk

SHAPES = {"mamba2-1.3b": (64, 64, 1, 128), "mamba2-1.3b-statex": (64, 64, 1, 512)}  # (H, P, G, N)


def ssd_step(batch: int, length: int, heads: int, headdim: int, groups: int, d_state: int):
    x = torch.randn(batch, length, heads, headdim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dt = F.softplus(torch.randn(batch, length, heads, device="cuda") - 3).requires_grad_()
    A = (-torch.rand(heads, device="cuda") * 15 - 1).requires_grad_()
    B = torch.randn(batch, length, groups, d_state, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    C = torch.randn_like(B, requires_grad=True)
    D = torch.randn(heads, device="cuda", requires_grad=True)
    dy = torch.randn_like(x)

    def step():
        y, _ = triton_chunk.chunk_ssd_triton(x, dt, A, B, C, D)
        y.backward(dy)

    return step


def kernel_times(step, steps: int = 5) -> dict[str, float]:
    """CUDA milliseconds per step of every kernel the step launches."""
    times: dict[str, float] = {}
    for event in profiled(step, steps).key_averages():
        if event.device_time_total > 0:
            name = event.key if event.key.endswith("_kernel") else "torch ops"
            times[name] = times.get(name, 0.0) + event.device_time_total / 1000 / steps
    return times


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out/ssd-kernels")
    parser.add_argument("--warps", default="2,4,8")
    parser.add_argument("--tokens", type=int, default=65536)
    parser.add_argument("--length", type=int, default=8192)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("ssd_kernels.py needs a CUDA GPU")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    default = dict(triton_chunk.WARPS)
    with open(out / "ssd_kernels.jsonl", "a") as log:
        for shape, dims in SHAPES.items():
            torch.manual_seed(0)
            step = ssd_step(max(1, args.tokens // args.length), args.length, *dims)
            for warps in (int(w) for w in args.warps.split(",")):
                triton_chunk.WARPS.update({name: warps for name in default})
                times = kernel_times(step)
                record = {"shape": shape, "T": args.length, "num_warps": warps, "ms": times,
                          "total_ms": sum(times.values())}
                log.write(json.dumps(record) + "\n")
                log.flush()
                print(f"{shape} num_warps={warps}: total {record['total_ms']:.2f} ms | "
                      + ", ".join(f"{k} {v:.2f}" for k, v in sorted(times.items(), key=lambda kv: -kv[1])),
                      flush=True)
            del step
            torch.cuda.empty_cache()
    triton_chunk.WARPS.update(default)


if __name__ == "__main__":
    main()
