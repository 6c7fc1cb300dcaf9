"""CPU benchmark: forward+backward time and extra peak memory of the pure-torch mixers.

Compared side by side in one run, each case in its own process (so peak memory is that case's alone):
- Mamba2: a 2-layer, d_model 256, d_state 64 Mamba2 LM, statex vs HF transformers' Mamba2ForCausalLM
  (torch path, its default chunk_size 256) with the same weights;
- GLA: a 2-layer, d_model 256, 4-head GLA LM (short conv on), statex's chunked kernel vs the same model
  running the per-token recurrence (statex.ops.gla.naive_recurrent_gla).

    python -m bench.cpu_mixers [--lengths 512,2048,8192] [--repeats 3] [--threads 2] [--json out.json]

Time: median of --repeats forward+backward passes after one warm-up, in its own process.
"Extra peak memory": in another, fresh process, peak RSS during its first forward+backward pass minus the RSS
just before it (model and inputs in place; the pass's gradients, activations and temporaries count), with
glibc's mmap threshold fixed at 64 KiB so that large freed tensors really leave the resident set. Each case runs under a 16 GiB address-space cap.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

VOCAB, D_MODEL, N_LAYER = 1024, 256, 2
MEMORY_CAP = 16 << 30


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def run_case(impl: str, length: int, repeats: int, threads: int, workdir: str, mode: str) -> dict:
    """Runs inside a child process; mode "time" (median of repeats after a warm-up) or "memory" (one pass
    under a fixed glibc mmap threshold so that freed tensors leave the resident set)."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    import statex

    checkpointing = impl.endswith("-ckpt")
    impl = impl.removesuffix("-ckpt")
    if impl in ("statex-mamba2", "hf-mamba2"):
        path = os.path.join(workdir, "mamba2")
        if impl == "hf-mamba2":
            import transformers

            transformers.logging.set_verbosity_error()
            model = transformers.Mamba2ForCausalLM.from_pretrained(path)
        else:
            model = statex.load_model(path)
    else:
        model = statex.load_model(os.path.join(workdir, "gla"))
        if impl == "naive-gla":
            from statex.ops.gla import naive_recurrent_gla
            from statex.runtime import dispatch

            def per_token(q, k, v, g, scale=None, initial_state=None, chunk_size=None):
                return naive_recurrent_gla(q, k, v, g, scale=scale, initial_state=initial_state)

            dispatch.chunk_gla = per_token  # the torch path the mixer dispatches to on CPU
    model.train()
    if checkpointing:  # statex's block-level gradient checkpointing (recompute each block in backward)
        model.gradient_checkpointing = True
    ids = torch.randint(0, VOCAB, (1, length))

    def step():
        model.zero_grad(set_to_none=True)
        logits = model(ids).logits
        loss = torch.nn.functional.cross_entropy(logits[0, :-1].float(), ids[0, 1:])
        loss.backward()

    try:
        if mode == "memory":  # a fresh process: everything the pass allocates shows in the resident set
            import gc

            gc.collect()
            base = _rss_bytes()
            _reset_peak()
            step()
            return {"extra_peak_mib": (_peak_bytes() - base) / 2**20}
        step()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return {"seconds": statistics.median(times)}
    except (RuntimeError, MemoryError) as exc:
        return {"error": str(exc).splitlines()[0][:120]}


def prepare(workdir: str) -> None:
    import torch

    import statex

    os.environ["HF_HUB_OFFLINE"] = "1"
    import transformers

    torch.manual_seed(0)
    hf_config = transformers.Mamba2Config(
        vocab_size=VOCAB, hidden_size=D_MODEL, num_hidden_layers=N_LAYER, state_size=64, head_dim=64,
        num_heads=2 * D_MODEL // 64, n_groups=1, expand=2, conv_kernel=4, tie_word_embeddings=True,
    )
    transformers.Mamba2ForCausalLM(hf_config).save_pretrained(os.path.join(workdir, "mamba2"))
    gla = statex.build_model(statex.gla_config(VOCAB, D_MODEL, N_LAYER, num_heads=4, use_short_conv=True), seed=0)
    gla.save_pretrained(os.path.join(workdir, "gla"))


def _child(mode: str, impl: str, length: int, workdir: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--case", f"{mode}:{impl}:{length}:{workdir}", "--repeats", str(args.repeats),
           "--threads", str(args.threads)]
    env = dict(os.environ)
    if mode == "memory":
        # glibc keeps freed memory (and raises its mmap threshold after frees), which hides peaks;
        # a fixed mmap threshold returns every large tensor to the OS when it is freed.
        env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": f"{mode} run failed (exit {proc.returncode}): {proc.stderr.strip()[-200:]}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="512,2048,8192")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--impls", default="statex-mamba2,statex-mamba2-ckpt,hf-mamba2,statex-gla,statex-gla-ckpt,"
                                           "naive-gla")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.case:  # child process
        mode, impl, length, workdir = args.case.split(":", 3)
        print(json.dumps(run_case(impl, int(length), args.repeats, args.threads, workdir, mode)))
        return

    lengths = [int(x) for x in args.lengths.split(",")]
    impls = args.impls.split(",")
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        prepare(workdir)
        for length in lengths:
            for impl in impls:
                row = {"impl": impl, "T": length}
                for mode in ("time", "memory"):
                    row.update(_child(mode, impl, length, workdir, args))
                results.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)

    print(f"Machine: {platform.processor() or platform.machine()}, {args.threads} torch threads, "
          f"python {platform.python_version()}; median of {args.repeats} forward+backward passes, batch 1\n")
    print("| model | T | implementation | fwd+bwd (s) | extra peak memory (MiB) | speed-up | memory ratio |")
    print("|---|---|---|---|---|---|---|")
    baseline = {"statex-mamba2": "hf-mamba2", "statex-mamba2-ckpt": "hf-mamba2", "statex-gla": "naive-gla",
                "statex-gla-ckpt": "naive-gla"}
    by_key = {(r["impl"], r["T"]): r for r in results}
    for length in lengths:
        for impl in impls:
            r = by_key[(impl, length)]
            family = "Mamba2" if "mamba2" in impl else "GLA"
            if "error" in r:
                print(f"| {family} | {length} | {impl} | failed: {r['error']} | | | |")
                continue
            ref = by_key.get((baseline.get(impl), length), {})
            speed = mem = ""
            if "seconds" in ref and "extra_peak_mib" in ref:
                speed = f"{ref['seconds'] / r['seconds']:.1f}x"
                mem = f"{r['extra_peak_mib'] / max(ref['extra_peak_mib'], 1e-9):.2f}"
            print(f"| {family} | {length} | {impl} | {r['seconds']:.3f} | {r['extra_peak_mib']:.0f} | {speed} | {mem} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
