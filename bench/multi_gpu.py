"""Post-training on several GPUs of one host (docs/training.md, "Several processes"), every part through the product's own command,
`torchrun --nproc_per_node N -m statex train`, one process group per run:

    exact    the same global batch and seed on 1 process and on N (DDP and FSDP2): the loss of each of the first
             STEPS steps, the largest relative difference, and how many steps are bit-identical
    resume   a run checkpointed by N processes continued by M != N (across DDP / FSDP2) against the same run
             made without the change: losses after the switch and the final weights
    kill     N processes, checkpoints every step; rank 1 killed with SIGKILL; the newest complete checkpoint
             reads back and `--resume` continues from it
    scale    tokens/s of the 1.3B shapes (GLA, Mamba2; with and without StateX on every 8th layer) at T = 16K
             and 64K on 1, 2, 4, 8 GPUs, batch 1 per GPU, DDP (and FSDP2 for memory): efficiency = tokens/s at N
             over N x tokens/s at 1; the largest peak memory of any rank

Models are random-initialised from config.json files this script writes (`--init`): the dynamics of a
pretrained checkpoint do not change what is measured here. Text is a seeded random-word corpus, byte tokens.
Each run is a fresh torchrun under its own time limit; the Triton cache is shared, so compiles are paid once.
NVLink multicast stays off (NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1, NVSHMEM_DISABLE_NVLS=1), as
the device's KINDS.md requires.

    python3 -m bench.multi_gpu --parts exact,resume,kill,scale --gpus 1,2,4,8 --out $OUT/multi-gpu   # 8 GPUs
    python3 -m bench.multi_gpu --device cpu --tiny --gpus 1,2 --out /tmp/multi-gpu                   # CPU, gloo

Writes OUT/results.jsonl (one record per run, appended), OUT/multi_gpu.md (the tables, multi_gpu_report.py),
OUT/runs.log (every run's output) and OUT/runs/<name>/ (metrics.jsonl; checkpoints are deleted after use).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
WORDS = ("river stone light house garden winter letter morning silver window market mountain question table "
         "between always quickly eleven yellow ancient").split()


def write_inputs(out: Path, tiny: bool, seed: int = 0) -> dict[str, Path]:
    """config.json per model (tiny shapes on a CPU, else the 1.3B shapes of bench/gpu_bench.py) and the corpus."""
    import statex

    if tiny:
        configs = {"gla": statex.gla_config(257, 32, 2, num_heads=2, use_short_conv=True),
                   "mamba2": statex.mamba2_config(257, 32, 2, d_state=16, headdim=16)}
    else:
        from bench.gpu_bench import config_13b

        configs = {"gla-1.3b": config_13b("gla"), "gla-1.3b-statex": config_13b("gla", expand_every=8),
                   "mamba2-1.3b": config_13b("mamba2"), "mamba2-1.3b-statex": config_13b("mamba2", expand_every=8)}
    inits = {}
    for name, config in configs.items():
        inits[name] = out / "init" / name
        inits[name].mkdir(parents=True, exist_ok=True)
        (inits[name] / "config.json").write_text(json.dumps(config.to_dict()))
    corpus = out / "corpus.jsonl"
    if not corpus.exists():
        rng = random.Random(seed)
        documents = 200 if tiny else 2000  # ~4 MB on the GPU: 64K-token sequences of bytes, a few epochs at most
        lines = (json.dumps({"text": " ".join(rng.choices(WORDS, k=60 if tiny else 400))}) for _ in range(documents))
        tmp = corpus.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(corpus)
    return {"corpus": corpus, **inits}


def worker_pid(out: Path, rank: int) -> int | None:
    """The pid of the torchrun worker of ``rank`` training into ``out`` (found through /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(out).encode() in command and b"-m" in command and f"RANK={rank}".encode() in environ \
                and b"torch.distributed.run" not in command:
            return int(entry.name)
    return None


class Runner:
    """Starts `statex train` runs (one process, or torchrun with N) and keeps their output in runs.log."""

    def __init__(self, args, inputs: dict[str, Path]):
        self.args, self.inputs, self.out = args, inputs, Path(args.out)
        self.env = {**os.environ, **NO_MULTICAST, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
            [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}

    def command(self, model: str, world: int, run: Path, seq_len: int, batch: int, steps: int, fsdp: bool,
                resume: bool = False, save_every: int | None = None, stop_at: int | None = None) -> list[str]:
        launcher = ["-m", "statex"] if world == 1 else [
            "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world), "-m", "statex"]
        flags = ["--init", str(self.inputs[model]), "--data", str(self.inputs["corpus"]), "--tokenizer", "bytes",
                 "--seq-len", str(seq_len), "--batch-size", str(batch), "--steps", str(steps), "--lr", "1e-3",
                 "--warmup", "2", "--log-every", "1", "--save-every", str(save_every or 10**9), "--no-progress",
                 "--heldout-sequences", "0", "--cache-dir", str(self.out / "token-cache"), "--out", str(run),
                 "--device", self.args.device, "--seed", "0"]
        if self.args.device == "cuda":
            flags += ["--precision", "bf16", "--grad-checkpoint"]
        else:
            flags += ["--threads", "1"]
        flags += (["--fsdp"] if fsdp else []) + (["--resume"] if resume else [])
        flags += ["--stop-at-step", str(stop_at)] if stop_at else []
        return [sys.executable, *launcher, "train", *flags]

    def run(self, name: str, command: list[str]) -> tuple[bool | str, str]:
        """(False | True for a non-zero exit | a timeout message, output); at most --timeout seconds."""
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env,
                                start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=self.args.timeout)
            failed: bool | str = proc.returncode != 0
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            failed = f"timed out after {self.args.timeout} s"
        with open(self.out / "runs.log", "a") as log:
            log.write(f"==== {name}: {' '.join(command[1:])}\n{output}\n")
        return failed, output

    def run_dir(self, name: str) -> Path:
        """OUT/runs/NAME, emptied: every part starts its runs afresh."""
        path = self.out / "runs" / name
        if path.exists():
            shutil.rmtree(path)
        return path


def metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [r for r in map(json.loads, lines) if "loss" in r]


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in metrics(run)]


def compare(reference: list[float], other: list[float]) -> dict:
    pairs = list(zip(reference, other))
    if not pairs or len(reference) != len(other):
        return {"error": f"{len(other)} losses against {len(reference)}"}
    return {"steps": len(pairs), "max_rel_diff": max(abs(a - b) / max(abs(a), 1e-12) for a, b in pairs),
            "bit_identical_steps": sum(a == b for a, b in pairs)}


def part_exact(runner: Runner, args) -> list[dict]:
    world = max(args.gpus)
    records = []
    for model in args.exact_models:
        batch = world * args.exact_batch_per_gpu
        reference = runner.run_dir(f"exact-{model}-1")
        failed, _ = runner.run(reference.name, runner.command(model, 1, reference, args.exact_len, batch,
                                                               args.exact_steps, fsdp=False))
        for fsdp in (False, True):
            run = runner.run_dir(f"exact-{model}-{world}-{'fsdp2' if fsdp else 'ddp'}")
            failed_n, _ = runner.run(run.name, runner.command(model, world, run, args.exact_len,
                                                                args.exact_batch_per_gpu, args.exact_steps, fsdp))
            record = {"part": "exact", "model": model, "world": world, "wrap": "fsdp2" if fsdp else "ddp",
                      "seq_len": args.exact_len, "global_batch": batch}
            if failed or failed_n:
                record["error"] = str(failed or failed_n)
            else:
                record.update(compare(losses(reference), losses(run)), losses_1=losses(reference)[:5],
                              losses_n=losses(run)[:5])
            records.append(record)
    return records


def part_resume(runner: Runner, args) -> list[dict]:
    big = max(args.gpus)
    small = max([g for g in args.gpus if g < big] or [1])
    steps, half = args.resume_steps, args.resume_steps // 2
    model = args.exact_models[0]
    records = []
    small_wrap = "fsdp2" if small > 1 else "single"  # one process is never wrapped
    for (n, wrap_n), (m, wrap_m) in (((big, "ddp"), (small, small_wrap)), ((small, small_wrap), (big, "fsdp2"))):
        reference = runner.run_dir(f"resume-{model}-reference-{n}")
        run = runner.run_dir(f"resume-{model}-{n}{wrap_n}-then-{m}{wrap_m}")
        batch = big * args.exact_batch_per_gpu  # global
        plan = [(reference, n, wrap_n, steps, False, None), (run, n, wrap_n, steps, False, half),
                (run, m, wrap_m, steps, True, None)]
        record = {"part": "resume", "model": model, "first": f"{n} {wrap_n}", "then": f"{m} {wrap_m}",
                  "switch_step": half, "steps": steps}
        for path, world, wrap, total, resume, stop in plan:
            failed, output = runner.run(path.name, runner.command(
                model, world, path, args.exact_len, batch // world, total, wrap == "fsdp2", resume=resume,
                save_every=half, stop_at=stop))
            if failed:
                record["error"] = f"{path.name} ({world} {wrap}): {failed}"
                break
            if resume:
                record["resumed_at_step"] = f"at step {half}" in output
        if "error" not in record:
            record.update(compare(losses(reference), losses(run)))
            record["weights_max_abs_diff"] = weight_difference(reference / "final", run / "final")
        for path in (reference, run):
            shutil.rmtree(path / "checkpoints", ignore_errors=True)
        records.append(record)
    return records


def weight_difference(a: Path, b: Path) -> float:
    import statex

    first, second = (statex.load_model(p).state_dict() for p in (a, b))
    return max(float((first[k].float() - second[k].float()).abs().max()) for k in first)


def part_kill(runner: Runner, args) -> list[dict]:
    from statex.train.checkpoint import checkpoint_dirs, load_latest_checkpoint

    world = max(g for g in args.gpus if g > 1) if any(g > 1 for g in args.gpus) else 2
    model = args.exact_models[0]
    run = runner.run_dir(f"kill-{model}-{world}")
    command = runner.command(model, world, run, args.exact_len, args.exact_batch_per_gpu, 10**6, False,
                             save_every=1)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=runner.env)
    record = {"part": "kill", "model": model, "world": world}
    deadline = time.time() + args.timeout
    while time.time() < deadline and len(checkpoint_dirs(run)) < 2 and proc.poll() is None:
        time.sleep(0.2)
    pid = worker_pid(run, 1)
    if pid is None:
        proc.kill()
        record["error"] = "no rank-1 worker found (or no checkpoint within the limit)"
        return [record]
    os.kill(pid, signal.SIGKILL)
    output, _ = proc.communicate(timeout=args.timeout)
    with open(runner.out / "runs.log", "a") as log:
        log.write(f"==== {run.name} (rank 1 killed)\n{output}\n")
    step = load_latest_checkpoint(run)[1]["step"]
    record.update(exit_code=proc.returncode, checkpoint_step=step, newest_dir=checkpoint_dirs(run)[-1].name)
    failed, output = runner.run(run.name + "-resume", runner.command(
        model, world, run, args.exact_len, args.exact_batch_per_gpu, step + 2, False, resume=True, save_every=1))
    steps = [r["step"] for r in metrics(run)]
    record.update(resumed=not failed and f"at step {step}" in output, last_steps=steps[-2:])
    shutil.rmtree(run / "checkpoints", ignore_errors=True)
    return [record]


def part_scale(runner: Runner, args) -> list[dict]:
    records = []
    for model in args.scale_models:
        for seq_len in args.scale_lens:
            for world in args.gpus:
                for fsdp in ((False, True) if world > 1 else (False,)):
                    wrap = "fsdp2" if fsdp else "ddp"
                    run = runner.run_dir(f"scale-{model}-{seq_len}-{world}-{wrap}")
                    failed, _ = runner.run(run.name, runner.command(model, world, run, seq_len, 1,
                                                                    args.scale_steps, fsdp))
                    rows = metrics(run)[args.scale_skip:]
                    record = {"part": "scale", "model": model, "seq_len": seq_len, "world": world, "wrap": wrap}
                    if failed or not rows:
                        record["error"] = str(failed or "no steps logged")
                    else:
                        record["tokens_per_s"] = statistics.median(r["tokens_per_s"] for r in rows)
                        peaks = [r["peak_memory_gib"] for r in rows if "peak_memory_gib" in r]  # CUDA only
                        if peaks:
                            record["peak_memory_gib"] = max(peaks)
                    records.append(record)
                    print("  ", json.dumps(record), flush=True)
    return records


PARTS = {"exact": part_exact, "resume": part_resume, "kill": part_kill, "scale": part_scale}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out/multi-gpu")
    parser.add_argument("--parts", default="exact,resume,kill,scale")
    parser.add_argument("--gpus", default="1,2,4,8", help="world sizes (scale: each; the others: the largest)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny models and lengths (the CPU check)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per run")
    parser.add_argument("--exact-steps", type=int, default=50)
    parser.add_argument("--exact-len", type=int, default=4096)
    parser.add_argument("--exact-batch-per-gpu", type=int, default=1)
    parser.add_argument("--resume-steps", type=int, default=20)
    parser.add_argument("--scale-lens", default="16384,65536")
    parser.add_argument("--scale-steps", type=int, default=12)
    parser.add_argument("--scale-skip", type=int, default=4, help="logged steps left out of the median")
    parser.add_argument("--models", default="", help="models of exact / resume / kill (default gla-1.3b, "
                        "mamba2-1.3b; --tiny: gla, mamba2) and of scale (default all four 1.3B shapes)")
    args = parser.parse_args(argv)
    args.gpus = sorted({int(g) for g in args.gpus.split(",")})
    args.parts = [p for p in args.parts.split(",") if p]
    if set(args.parts) - set(PARTS):
        sys.exit(f"multi_gpu.py: unknown part(s) {', '.join(sorted(set(args.parts) - set(PARTS)))}")
    if args.device == "cuda":
        import torch

        if torch.cuda.device_count() < max(args.gpus):
            sys.exit(f"multi_gpu.py: --gpus asks for {max(args.gpus)} GPUs, {torch.cuda.device_count()} visible")
    if args.tiny:
        args.exact_len, args.scale_lens, args.scale_steps, args.scale_skip = 64, [64, 128], 6, 2
        args.exact_steps, args.resume_steps = min(args.exact_steps, 8), min(args.resume_steps, 6)
    else:
        args.scale_lens = [int(x) for x in str(args.scale_lens).split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    inputs = write_inputs(out, args.tiny)
    models = [m for m in args.models.split(",") if m]
    if set(models) - set(inputs) - {"corpus"}:
        sys.exit(f"multi_gpu.py: unknown model(s) {', '.join(sorted(set(models) - set(inputs)))}")
    args.exact_models = models or (["gla", "mamba2"] if args.tiny else ["gla-1.3b", "mamba2-1.3b"])
    args.scale_models = models or [m for m in inputs if m != "corpus"]
    runner = Runner(args, inputs)
    from bench.multi_gpu_report import tables

    results = []
    for part in args.parts:
        print(f"== {part}", flush=True)
        started = time.time()
        for record in PARTS[part](runner, args):
            record["wall_s"] = round(time.time() - started, 1)
            results.append(record)
            with open(out / "results.jsonl", "a") as log:
                log.write(json.dumps(record) + "\n")
        print(tables(results), flush=True)
    (out / "multi_gpu.md").write_text(tables(results))


if __name__ == "__main__":
    main()
