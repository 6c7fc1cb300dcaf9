"""Time to the first optimizer step, and the steady tokens/s, of `statex train` runs on a machine without a warm
Triton cache (each case gets a fresh STATEX_CACHE_DIR).

    python -m bench.first_step --out out/first-step [--cases midscale-gla:fast,midscale-gla:full,...]
        [--data FILE] [--steps 30]

A case is NAME:MODE. NAME picks a training command (CASES below); MODE is `--autotune`. A case named again
runs in the cache its first run filled (a later run on the same machine). For each case the
script launches `statex train` as a user would, notes the launch time, and reads the run's metrics.jsonl
(whose first record is the first optimizer step, with a wall-clock "time"). Reported per case: seconds from
launch to the first step, the prewarm's seconds (from the run's output), and the median tokens/s over the
records after the first few steps. Results: OUT/first_step.json and OUT/first_step.md; each run's log
beside them. docs/gpu.md and docs/benchmarks.md quote them.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIDSCALE = ROOT / "experiments" / "midscale"

# name -> (config file, options replacing the file's, description). Every case trains from a fresh model (the
# post-training stages' speed does not depend on the weights) on the byte tokenizer.
CASES = {
    "midscale-gla": (MIDSCALE / "pretrain.yaml", {}, "98M GLA (midscale pretrain.yaml), T=1024 x 32, bf16"),
    "midscale-lpt": (MIDSCALE / "lpt.yaml", {"init": str(MIDSCALE / "gla-100m.json")},
                     "98M GLA, LPT stage (lpt.yaml), T=4096 x 8, bf16, grad checkpointing"),
    "midscale-statex": (MIDSCALE / "statex.yaml", {"init": str(MIDSCALE / "gla-100m.json")},
                        "98M GLA, StateX stage (statex.yaml: every:3 merged to 1 head), T=4096 x 8, bf16, grad ckpt"),
    "midscale-mamba2": (MIDSCALE / "pretrain.yaml", {"init": str(MIDSCALE / "mamba2-100m.json")},
                        "103M Mamba2 (mamba2-100m.json), pretrain.yaml's T=1024 x 32, bf16"),
    "gla-1.3b-statex-16k": (MIDSCALE / "pretrain.yaml",
                            {"init": str(ROOT / "tests" / "fixtures" / "gla-1.3B"), "expand_layers": "every:6",
                             "seq_len": 16384, "batch_size": 1, "grad_checkpoint": True},
                            "GLA-1.3B with every:6 StateX (heads merged), T=16384 x 1, bf16, grad checkpointing"),
}


def case_config(name: str, data: str, steps: int, out: Path, run: Path) -> Path:
    """The case's training options as a JSON config file: its YAML, the case's replacements, and this
    benchmark's bookkeeping (a short run, no checkpoint before the end, no held-out loss)."""
    from statex import load_tokenizer
    from statex.data.synthetic import MQARSpec
    from statex.train import read_config_file

    path, replace, _ = CASES[name]
    options = read_config_file(path)
    options.update(replace)
    if "init" in replace:
        options.pop("model", None)
    options.update(data=data, tokenizer="bytes", cache_dir=str(out / "token-cache"), out=str(run), steps=steps,
                   log_every=5, save_every=10 * steps, heldout_sequences=0, progress=True)
    # The byte tokenizer gives MQAR 127 distinct keys; the recipe's 16K tokenizer allows its 256 pairs. The
    # pair count changes which positions are labelled, not the work of a step.
    keys = MQARSpec.for_tokenizer(load_tokenizer("bytes")).num_keys
    for source in options.get("synthetic") or []:
        if isinstance(source, dict) and source.get("kind") == "mqar" and "num_pairs" in source:
            low, high = source["num_pairs"]
            source["num_pairs"] = [min(low, keys), min(high, keys)]
    config = out / f"{run.name}.json"
    config.write_text(json.dumps(options, indent=1) + "\n")
    return config


def run_case(name: str, mode: str, data: str, steps: int, out: Path, limit: float, repeat: int = 0) -> dict:
    """``repeat`` > 0: the same case again, in the cache the first one filled (what a later run finds)."""
    label = f"{name}-{mode}" + (f"-again{repeat}" if repeat else "")
    run = out / label
    config = case_config(name, data, steps, out, run)
    env = {**os.environ, "STATEX_CACHE_DIR": str(out / f"cache-{name}-{mode}"), "PYTHONUNBUFFERED": "1"}
    env.pop("TRITON_CACHE_DIR", None)
    command = [sys.executable, "-m", "statex", "train", "--config", str(config), "--autotune", mode]
    launched = time.time()
    with open(out / f"{label}.log", "w") as log:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        copier = threading.Thread(target=copy_with_times, args=(proc.stdout, log, launched), daemon=True)
        copier.start()
        try:
            code = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = "timeout"
        copier.join(timeout=10)
    text = (out / f"{label}.log").read_text(errors="replace")
    records = []
    if (run / "metrics.jsonl").exists():
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    prewarm = re.findall(r"prewarm done in (\d+) s", text)
    late = compiled_after_prewarm(out / f"cache-{name}-{mode}" / "triton")
    steady = [r["tokens_per_s"] for r in records if r["step"] > 5]
    return {"case": name, "mode": mode, "cache": "warm" if repeat else "fresh", "what": CASES[name][2], "exit": code,
            "steps": records[-1]["step"] if records else 0,
            "first_step_s": round(records[0]["time"] - launched, 1) if records else None,
            "prewarm_s": int(prewarm[0]) if prewarm else None,
            "steady_tokens_per_s": round(statistics.median(steady)) if steady else None,
            "compiled_by_run": late, "wall_s": round(time.time() - launched, 1),
            "log_tail": text[-600:] if code != 0 else ""}


def copy_with_times(stream, log, launched: float) -> None:
    """Copy the run's output into its log, each line (and each progress-bar redraw) prefixed with the seconds
    since launch, so the log shows where the time to the first step went."""
    line = b""
    while chunk := stream.read1(65536):
        for byte in (chunk[i:i + 1] for i in range(len(chunk))):
            line += byte
            if byte in (b"\n", b"\r"):
                log.write(f"[{time.time() - launched:6.1f} s] " + line.decode(errors="replace").rstrip() + "\n")
                line = b""
        log.flush()
    if line:
        log.write(f"[{time.time() - launched:6.1f} s] " + line.decode(errors="replace") + "\n")


def compiled_after_prewarm(cache: Path) -> dict | None:
    """The kernels the run compiled itself after its prewarm finished (the prewarm should leave none): count and
    names, from the Triton cache entries newer than the prewarm's marker. None when no prewarm completed."""
    markers = list((cache / "statex-prewarm").glob("*.json"))
    if not markers:
        return None
    done = max(m.stat().st_mtime for m in markers)
    names = sorted(f.name.removesuffix(".cubin") for f in cache.glob("*/*.cubin") if f.stat().st_mtime > done)
    return {"count": len(names), "kernels": sorted(set(names))[:20]}


def table(results: list[dict]) -> str:
    lines = ["| case | autotune | cache | first step (s from launch) | of which prewarm (s) | kernels the run "
             "compiled after the prewarm | steady tokens/s | exit |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        late = r["compiled_by_run"]["count"] if r.get("compiled_by_run") else "-"
        speed = f"{r['steady_tokens_per_s']:,}" if r["steady_tokens_per_s"] else "-"
        lines.append(f"| {r['case']} | {r['mode']} | {r['cache']} | {r['first_step_s']} | {r['prewarm_s']} | {late} | {speed} | "
                     f"{r['exit']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out/first-step")
    parser.add_argument("--cases", default="midscale-gla:fast,midscale-gla:full")
    parser.add_argument("--data", help="training text (default: the demo's template text, 5 MB, written here)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--limit", type=float, default=300, help="seconds per case")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = args.data
    if data is None:
        from statex.data.templates import write_corpus

        data = str(write_corpus(out / "data", 30_000, 0))
    results, seen = [], []
    for case in [c for c in args.cases.split(",") if c]:
        name, _, mode = case.partition(":")
        if name not in CASES or mode not in ("full", "fast", "off"):
            sys.exit(f"first_step.py: unknown case {case!r} (names {', '.join(CASES)}; modes full, fast, off)")
        result = run_case(name, mode, data, args.steps, out, args.limit, repeat=seen.count(case))
        seen.append(case)
        print(json.dumps(result), flush=True)
        results.append(result)
        (out / "first_step.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "first_step.md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
