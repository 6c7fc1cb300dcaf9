"""GPU benchmark: StateX's GLA and Mamba2 layers and the GLA-1.3B model on CUDA (the fast kernels via statex.runtime.dispatch).

    python -m bench.gpu_bench --out DIR [--parts peak,layers,decode,model] [--lengths 2048,8192,32768,65536]

Parts (each case runs in its own process with the part's time limit, so one stuck Triton compile costs only its
case):
- peak: bf16 matmul 8192^3, the TFLOP/s every other figure is compared against.
- layers: forward+backward of one layer (bf16 weights and activations) at 1.3B shapes over ``--tokens`` tokens
  per step (batch = tokens / T): statex GLA 4 heads of 256 x 512, statex GLA StateX-merged (1 head of
  1024 x 2048), fla's own GatedLinearAttention layer at the 4-head shape, statex Mamba2 (d_state 128) and
  Mamba2 StateX (d_state 512). Tokens/s, peak memory, model TFLOP/s (see ``layer_flops``).
- decode: tokens/s of one decoding step of the whole GLA-1.3B and Mamba2-1.3B models (random weights,
  bf16), original and expanded, at batch 1 and 64, eager and replayed from a CUDA graph.
- model: whole-model training step (autocast bf16, fp32 master weights, AdamW) of GLA-1.3B (every:6) and
  Mamba2-1.3B (every:8) at T=2048 with and without expansion.
The cases and the kernel settings each runs under are fields of bench/registry.py.
Writes DIR/results.jsonl (one JSON object per measurement) and DIR/benchmarks.md (the tables, judged against the
issues' targets: gpu_bench_report.py).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.gpu_bench_report import tables
from bench.registry import PARTS, Case, find, select

ROOT = Path(__file__).resolve().parents[1]

CHUNK = 64  # fla's chunk size, for the FLOP model

# ---- shapes --------------------------------------------------------------------------------------------------------


SHAPES_13B = {  # family: (config kwargs, layers, expand_config kwargs of its StateX version)
    "gla": (dict(vocab_size=32000, d_model=2048, num_heads=4, expand_k=0.5, expand_v=1.0, hidden_ratio=4,
                 use_short_conv=False), 24, dict(heads=1)),
    "mamba2": (dict(vocab_size=50288, d_model=2048, d_state=128, headdim=64, expand=2, ngroups=1,
                    tie_embeddings=True), 48, dict(factor=4)),
}


def config_13b(family: str, expand_every: int | None = None, n_layer: int | None = None):
    """The 1.3B shape of a family, with every expand_every-th layer (from layer 0) StateX-expanded."""
    import statex

    kwargs, layers, expansion = SHAPES_13B[family]
    n_layer = n_layer or layers
    builder = statex.gla_config if family == "gla" else statex.mamba2_config
    config = builder(n_layer=n_layer, **kwargs)
    if expand_every:
        config = statex.expand_config(config, list(range(0, n_layer, expand_every)), **expansion)
    return config


def kernel_flops_per_token(heads: int, key_dim: int, value_dim: int) -> float:
    """Forward+backward FLOPs per token of chunked linear attention (model count, chunk CHUNK): per head,
    in-chunk scores and outputs 2*C*(K + V), state read and update 4*K*V; backward counted as 2x forward."""
    return 3 * heads * (2 * CHUNK * (key_dim + value_dim) + 4 * key_dim * value_dim)


def spec_dims(spec) -> tuple[int, int, int]:
    """(heads, key dim, value dim per head) of a layer spec: GLA's, or Mamba2's SSD as linear attention (keys
    d_state wide, values headdim wide)."""
    if hasattr(spec, "num_heads"):
        return spec.num_heads, spec.head_k_dim, spec.head_v_dim
    return spec.nheads, spec.d_state, spec.headdim


def layer_flops_per_token(layer: torch.nn.Module, heads: int, key_dim: int, value_dim: int) -> float:
    matmul = sum(p.numel() for n, p in layer.named_parameters() if p.dim() == 2 and "conv" not in n)
    return 6 * matmul + kernel_flops_per_token(heads, key_dim, value_dim)


def build_layer(case: Case):
    """(module, heads, key dim, value dim per head) for a layer case."""
    from statex.models.gla import GLAMixer
    from statex.models.mamba2 import Mamba2Mixer

    if case.implementation == "fla":
        from fla.layers.gla import GatedLinearAttention

        layer = GatedLinearAttention(mode="chunk", hidden_size=2048, expand_k=0.5, expand_v=1.0, num_heads=4,
                                     use_short_conv=False, gate_low_rank_dim=16, norm_eps=1e-6, fuse_norm=True)
        return layer, 4, 256, 512
    spec = config_13b(case.family, 1 if case.expanded else None).layers[0]
    if case.family == "gla":
        return GLAMixer(2048, spec), spec.num_heads, spec.head_k_dim, spec.head_v_dim
    return Mamba2Mixer(2048, spec), spec.nheads, spec.d_state, spec.headdim


# ---- timing ------------------------------------------------------------------------------------------------------


def cuda_time(fn, warmup: int = 2, repeats: int = 5) -> float:
    """Median seconds of fn() over repeats, after warmup calls (first calls compile Triton kernels)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return sorted(times)[len(times) // 2]


_started = time.time()


def shorten_autotuning(spec: str) -> None:
    """Time each autotuning candidate for WARMUP,REP milliseconds instead of Triton's 25,100 (statex's own
    mechanism, statex.runtime.autotune.set_timing). With ~20 candidates x ~10 kernels per shape the default costs
    about two minutes per layer case, the short one a quarter of that. Only which config wins can change (every
    kernel runs >= 0.1 ms, so REP=25 still times dozens of runs per candidate); the measurements below use
    cuda_time, not this."""
    if not spec:
        return
    from statex.runtime.autotune import set_timing

    warmup, rep = (int(x) for x in spec.split(","))
    set_timing(warmup, rep)


def progress(message: str) -> None:
    """A timestamped line in the part's log (where the time of a slow case went)."""
    print(f"[{time.time() - _started:6.1f} s] {message}", flush=True)


def emit(record: dict) -> None:
    print("RESULT " + json.dumps(record), flush=True)


def measure_peak(args) -> None:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    seconds = cuda_time(lambda: a @ b, warmup=3, repeats=10)
    emit({"part": "peak", "tflops": 2 * 8192**3 / seconds / 1e12})


def each_case(measure):
    """Run measure(args, case) for the case args.name of its part, under the case's kernel settings (each case has
    its own process), with progress lines; a failure is recorded as the case's result."""
    def run(args) -> None:
        from statex import runtime

        case = find(measure.__name__[8:], args.name)
        progress(f"{case.part} {case.name}: start")
        try:
            runtime.configure(**case.settings)
            measure(args, case)
            progress(f"{case.part} {case.name}: done")
        except Exception as exc:
            emit({"part": case.part, "name": case.name, "error": f"{type(exc).__name__}: {exc}"[:300]})
    return run


def layer_step(layer, batch: int, length: int):
    """A function running forward+backward of the layer on one random bf16 batch."""
    x = torch.randn(batch, length, 2048, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn_like(x)

    def step():
        out = layer(x)
        out = out[0] if isinstance(out, tuple) else out
        out.backward(grad)

    return step


@each_case
def measure_layers(args, case: Case) -> None:
    name = case.name
    torch.manual_seed(0)
    layer, heads, key_dim, value_dim = build_layer(case)
    layer = layer.to("cuda", torch.bfloat16)
    flops = layer_flops_per_token(layer, heads, key_dim, value_dim)
    for length in args.lengths:
        batch = max(1, args.tokens // length)
        torch.cuda.empty_cache()
        try:
            step = layer_step(layer, batch, length)
            step()  # the first call compiles and autotunes: its buffers are not the layer's memory
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            seconds = cuda_time(step)
        except torch.OutOfMemoryError:
            emit({"part": "layers", "name": name, "T": length, "error": "out of memory"})
            continue
        tokens = batch * length
        progress(f"{name} T={length}: {1000 * seconds:.1f} ms")
        emit({"part": "layers", "name": name, "T": length, "batch": batch, "seconds": seconds,
              "tokens_per_s": tokens / seconds, "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
              "tflops": flops * tokens / seconds / 1e12, "flops_per_token": flops,
              "kernel_flops_per_token": kernel_flops_per_token(heads, key_dim, value_dim)})
        del step
    del layer
    torch.cuda.empty_cache()


def build_model(case: Case, n_layer: int | None = None):
    """A 1.3B-shaped model of the case's family on the GPU (random weights), StateX-expanded on every 6th (GLA) or
    8th (Mamba2) layer when the case is; n_layer shortens it (same layer shapes; the first layer is expanded)."""
    from statex.models import build_model as build

    every = (6 if case.family == "gla" else 8) if case.expanded else None
    torch.manual_seed(0)
    return build(config_13b(case.family, every, n_layer), device="cuda", seed=0)


def decode_step(model, batch: int, graph: bool = False):
    """Prefill 16 random tokens at this batch, then return a function running one decoding step (no grad):
    eager, or replayed from a CUDA graph (statex.models.generation.StepRunner)."""
    from statex.models.generation import StepRunner

    prompt = torch.randint(0, 32000, (batch, 16), device="cuda")
    with torch.no_grad():
        out = model(prompt, use_cache=True)
    state, token = out.state, out.logits[:, -1].argmax(-1, keepdim=True)
    if graph:
        runner = StepRunner(model, state, graph=True)
        return lambda: runner(token[:, 0])

    @torch.no_grad()
    def step():
        model(token, state=state, use_cache=True)

    return step


def train_step(model, batch: int, length: int = 2048, optimizer=None):
    """A function running one training step on random tokens: autocast bf16 forward, backward, and the
    optimizer's step when one is given."""
    ids = torch.randint(0, 32000, (batch, length), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(ids, labels=ids).loss
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            model.zero_grad(set_to_none=True)

    return step


DECODE_BATCHES = (1, 64)


@each_case
def measure_decode(args, case: Case) -> None:
    name = case.name
    model = build_model(case).to(torch.bfloat16).eval()
    for graph in (False, True):
        for batch in DECODE_BATCHES:
            seconds = cuda_time(decode_step(model, batch, graph), warmup=3, repeats=20)
            emit({"part": "decode", "name": name, "batch": batch, "cuda_graph": graph, "seconds_per_step": seconds,
                  "tokens_per_s": batch / seconds})


@each_case
def measure_model(args, case: Case) -> None:
    name = case.name
    model = build_model(case).train()
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    length, batch = 2048, args.model_batch
    step = train_step(model, batch, length, optimizer)
    step()  # compile, autotune, optimizer state
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    seconds = cuda_time(step, warmup=2, repeats=5)
    kernel = sum(kernel_flops_per_token(*spec_dims(s)) for s in model.config.layers)
    flops = 6 * params + kernel
    emit({"part": "model", "name": name, "T": length, "batch": batch, "params": params,
          "seconds": seconds, "tokens_per_s": batch * length / seconds, "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
          "tflops": flops * batch * length / seconds / 1e12})
    del model, optimizer


MEASURE = {"peak": measure_peak, "layers": measure_layers, "decode": measure_decode, "model": measure_model}


# ---- driver ------------------------------------------------------------------------------------------------------


def run_case(cmd: list[str], log_path: Path, limit: float) -> tuple[str, bool | str]:
    """Run one part's process with its output in log_path (then appended to parts.log); kill its whole process group (Triton's compiler
    children too) at the limit. Returns (output, False | True for a non-zero exit | a timeout message)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
        try:
            failed = proc.wait(timeout=limit) != 0
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            failed = f"timed out after {limit} s"
    output = log_path.read_text(errors="replace")
    with open(log_path.parent / "parts.log", "a") as combined:  # one file: fewer files to copy back from a GPU machine
        combined.write(f"==== {' '.join(cmd[2:])}\n{output}\n")
    log_path.unlink()
    return output, failed


def run_all(args) -> list[dict]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    log = open(out / "results.jsonl", "a")
    limits = {k: int(v) for k, _, v in (x.partition("=") for x in args.part_timeouts.split(",") if x)}
    # one process per case, so that a case stuck compiling costs only itself; compiled kernels and autotuning
    # results reach the later processes through Triton's on-disk cache
    for case in select(args.parts, args.only):
        part, name = case.part, case.name
        cmd = [sys.executable, "-m", "bench.gpu_bench", "--case", part, "--name", name, "--tokens", str(args.tokens),
               "--lengths", ",".join(map(str, args.lengths)), "--model-batch", str(args.model_batch),
               "--tune-ms", args.tune_ms]
        started = time.time()
        print(f"== {part} {name}", flush=True)
        output, failed = run_case(cmd, out / f"{part}.log", limits.get(part, args.timeout))
        found = [json.loads(line[7:]) for line in output.splitlines() if line.startswith("RESULT ")]
        if failed:
            tail = output.strip().splitlines()[-3:] if isinstance(failed, bool) else [failed]
            found.append({"part": part, "name": name, "error": " | ".join(tail)[-400:]})
        for record in found:
            record["wall_s"] = round(time.time() - started, 1)
            print("  ", json.dumps(record), flush=True)
            log.write(json.dumps(record) + "\n")
            log.flush()
        results += found
    (out / "benchmarks.md").write_text(tables(results))
    print(tables(results))
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out/gpu-bench")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--lengths", default="2048,8192,32768,65536")
    parser.add_argument("--tokens", type=int, default=65536, help="tokens per layer step (batch = tokens / T)")
    parser.add_argument("--model-batch", type=int, default=8, help="sequences of 2048 per whole-model step")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per part's process")
    parser.add_argument("--part-timeouts", default="", help="per-part limits, e.g. layers=130,model=100")
    parser.add_argument("--only", default="", help="comma-separated case names to run (default: all), "
                        "e.g. fla-gla,statex-mamba2,gla:statex")
    parser.add_argument("--tune-ms", default="", metavar="WARMUP,REP",
                        help="milliseconds each Triton autotuning candidate is timed (default Triton's 25,100)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.parts = [p for p in args.parts.split(",") if p]
    args.lengths = [int(x) for x in args.lengths.split(",") if x]
    args.only = [x for x in args.only.split(",") if x]
    try:
        select(args.parts, args.only)
    except ValueError as exc:
        sys.exit(f"gpu_bench: {exc}")
    if args.case:
        shorten_autotuning(args.tune_ms)
        MEASURE[args.case](args)
        return
    if not torch.cuda.is_available():
        sys.exit("gpu_bench.py needs a CUDA GPU")
    os.environ.setdefault("STATEX_BACKEND", "fla")
    run_all(args)


if __name__ == "__main__":
    main()
