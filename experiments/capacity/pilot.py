"""The study's pilot: from-scratch 4-layer, d_model 128 models on zoology's MQAR mixture (the spec's), the S and 4S
models of each family at learning rates 1e-3 and 3e-3, each in its own process on one GPU, then the MQAR grid.

    STATEX_BACKEND=torch STATEX_AUTOTUNE=off python experiments/capacity/pilot.py --out out/capacity-pilot

Writes OUT/<family>-<size>S-<lr>.json (MQAR per cell, the loss log, seconds) and prints one line per run. Its
results chose the spec's learning rate and Mamba2's state sizes (results.md).
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

MIX = [{"kind": "mqar", "weight": 100, "seq_len": 64, "num_pairs": [4, 4]},
       {"kind": "mqar", "weight": 20, "seq_len": 128, "num_pairs": [8, 8]},
       {"kind": "mqar", "weight": 20, "seq_len": 256, "num_pairs": [16, 16]},
       {"kind": "mqar", "weight": 20, "seq_len": 256, "num_pairs": [32, 32]},
       {"kind": "mqar", "weight": 20, "seq_len": 256, "num_pairs": [64, 64]}]
RUNS = [("gla", 1, 1e-3), ("gla", 1, 3e-3), ("gla", 4, 3e-3), ("mamba2", 1, 1e-3), ("mamba2", 1, 3e-3),
        ("mamba2", 4, 3e-3)]


def run(family: str, size: int, lr: float, steps: int, out: Path) -> None:
    import statex
    from statex.eval import evaluate
    from statex.models.init import initialise
    from statex.train import resolve_config

    if family == "gla":  # S: 4 heads per layer; 4S: one head
        config = statex.gla_config(8192, 128, 4, num_heads={1: 4, 4: 1}[size], use_short_conv=True,
                                   tie_embeddings=True)
        init = {"embedding_std": 1.0}
    else:  # S: d_state 8; 4S: d_state 32
        config = statex.mamba2_config(8192, 128, 4, d_state={1: 8, 4: 32}[size], headdim=32)
        init = {"dt_range": [0.01, 0.1], "a_range": [0.1, 1.0], "D": 0.0}
    root = out / f"{family}-{size}S-{lr:g}"
    initialise(config, init, 0).save_pretrained(root / "init")
    begun = time.time()
    statex.train(resolve_config({}, dict(model=str(root / "init"), tokenizer="ids:8192", synthetic=MIX, seq_len=256,
                                         batch_size=256, steps=steps, lr=lr, min_lr=lr / 10, warmup=steps // 20,
                                         out=str(root / "train"), progress=False, heldout_sequences=0,
                                         save_every=steps, log_every=100, device="cuda")))
    seconds = time.time() - begun
    model = statex.load_model(root / "train" / "final", device="cuda")
    records = evaluate({"m": model}, ["mqar"], statex.load_tokenizer("ids:8192"), seed=1234, n=256, batch_size=256,
                       progress=False, mqar_lengths=[64, 128, 256, 512, 1024], pairs=[4, 8, 16, 32, 64, 128, 256])
    result = {"family": family, "size": size, "lr": lr, "steps": steps, "train_s": round(seconds, 1),
              "state": statex.describe_model(model)["total_state_elements"],
              "mqar": {r.setting: r.value for r in records},
              "log": [json.loads(line) for line in (root / "train" / "metrics.jsonl").read_text().splitlines()]}
    (out / f"{family}-{size}S-{lr:g}.json").write_text(json.dumps(result) + "\n")
    print(family, size, lr, f"{seconds:.0f} s", {k: round(v, 3) for k, v in result["mqar"].items()}, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--run", nargs=3, metavar=("FAMILY", "SIZE", "LR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.run:
        run(args.run[0], int(args.run[1]), float(args.run[2]), args.steps, args.out)
        return
    workers = [subprocess.Popen([sys.executable, __file__, "--out", str(args.out), "--steps", str(args.steps),
                                 "--run", family, str(size), str(lr)]) for family, size, lr in RUNS]
    sys.exit(max(w.wait() for w in workers))


if __name__ == "__main__":
    main()
