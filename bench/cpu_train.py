"""CPU training throughput of a ~10M-parameter model at T=1024 through the real trainer (``statex.train``).

    python -m bench.cpu_train [--steps 12] [--batch-size 4] [--seq-len 1024] [--threads 2]

Builds a synthetic byte-level text corpus in a temporary directory, trains a GLA (d_model 256, 12 layers,
4 heads, short conv) and a Mamba2 (d_model 256, 24 layers, d_state 64) for --steps steps each, and reports the
median tokens/s of the logged steps after the first (which includes one-time costs).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

import statex
from statex.train import resolve_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = {
        "gla": statex.gla_config(257, 256, 12, num_heads=4, use_short_conv=True),
        "mamba2": statex.mamba2_config(257, 256, 24, d_state=64, headdim=64),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        words = [f"w{i}" for i in range(500)]
        with open(tmp / "corpus.jsonl", "w") as f:
            for _ in range(3000):
                f.write(json.dumps({"text": " ".join(rng.choice(words, 200))}) + "\n")
        for name, config in models.items():
            params = statex.build_model(config, device="meta").num_parameters()
            (tmp / name).mkdir()
            (tmp / name / "config.json").write_text(json.dumps(config.to_dict()))
            out = tmp / f"run-{name}"
            statex.train(resolve_config({}, dict(
                init=str(tmp / name), data=str(tmp / "corpus.jsonl"), seq_len=args.seq_len,
                batch_size=args.batch_size, steps=args.steps, warmup=1, save_every=10**6, log_every=1,
                heldout_sequences=0, out=str(out), cache_dir=str(tmp / "cache"), progress=False,
                threads=args.threads, precision=args.precision)))
            records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][1:]
            rows.append((name, params, statistics.median(speeds)))
    print(f"T={args.seq_len}, batch {args.batch_size}, {args.threads} threads, {args.precision}, "
          f"median over steps 2..{args.steps}\n")
    print("| model | parameters | training tokens/s |")
    print("|---|---|---|")
    for name, params, speed in rows:
        print(f"| {name} | {params / 1e6:.1f}M | {speed:,.0f} |")


if __name__ == "__main__":
    main()
