"""Pilot: does a small GLA learn MQAR from text when MQAR draws its keys and values from a few hundred token
ids instead of half the vocabulary each? (CPU; see README.md.)

    python experiments/pilot-recall-keys/run.py NAME KEYS OUT   # e.g. k256 256 /tmp/pilot-keys

Trains experiments/pilot-recall-mix/model.json (2.1M GLA, 8K vocabulary) on corpus/train with the pilot's
8K BPE (TOKENIZER env var), MQAR keys from [1, 1+KEYS) and values from [1+KEYS, 1+2*KEYS) (KEYS=0: the
library's default, half the vocabulary each), then evaluates MQAR with the same ranges (and passkey at T = 256).
EMBEDDING_STD=1.0: the embedding initialised at that std instead of the library's 0.02 (the CPU miniature's
lever). LOSS_AVERAGE=sequences: every sequence counts equally in the loss (the CPU demo's setting) instead of
every labelled token (the trainer's default, which the earlier runs used)."""
import json
import os
import sys
from pathlib import Path

import torch

import statex
from statex.eval import evaluate
from statex.train import resolve_config

name, keys, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
HERE = Path(__file__).resolve().parent
torch.manual_seed(0)
tokenizer_path = os.environ.get("TOKENIZER", "/tmp/evprof/tok.json")
start = dict(init=str(HERE.parent / "pilot-recall-mix" / "model.json"))
if os.environ.get("EMBEDDING_STD"):
    model = statex.build_model(statex.ModelConfig.from_dict(json.loads(Path(start["init"]).read_text())), seed=0)
    with torch.no_grad():
        torch.nn.init.normal_(model.embed_tokens.weight, std=float(os.environ["EMBEDDING_STD"]))
    statex.save_model(model, out / f"{name}-init")
    start = dict(model=str(out / f"{name}-init"))
options = dict(**start, data="corpus/train",
               tokenizer=tokenizer_path, cache_dir=str(out / "cache"),
               synthetic=[{"kind": "mqar", "weight": 1.0, "num_pairs": [4, 32], **({"keys": keys} if keys else {})},
                          {"kind": "passkey", "weight": 0.05}],
               loss_average=os.environ.get("LOSS_AVERAGE", "tokens"), seq_len=256, batch_size=16, steps=int(os.environ.get("STEPS", 1200)), lr=3e-3, min_lr=3e-4,
               warmup=60, beta2=0.95, log_every=50, save_every=100000, threads=1, progress=False,
               out=str(out / name), seed=0)
statex.train(resolve_config({}, options))
model = statex.load_model(out / name / "final")
tokenizer = statex.load_tokenizer(tokenizer_path)
records = evaluate({name: model}, ["mqar"], tokenizer, pairs=[4, 8, 16, 32], mqar_lengths=[256], n=48,
                   batch_size=16, progress=False, seed=1234, mqar_keys=keys or None)
result = {f"{r.params['length']}/{r.params['pairs']}": round(float(r.value), 3) for r in records}
if os.environ.get("PASSKEY"):  # passkey at the training length, three depths
    records = evaluate({name: model}, ["passkey"], tokenizer, lengths=[256], depths=[0.0, 0.5, 1.0], n=16,
                       batch_size=16, progress=False, seed=1234)
    result.update({f"passkey 256/{r.params['depth']:.1f}": round(float(r.value), 3) for r in records})
print(name, json.dumps(result), flush=True)
(out / f"{name}-eval.json").write_text(json.dumps(result, indent=1) + "\n")
