"""Passkey retrieval (SPEC.md section 6, as in "Stuffed Mamba"): a 5-digit passkey hidden at a depth in
repeated filler; greedy decoding of a few tokens; correct when the passkey appears in the output."""
from __future__ import annotations

import torch

from statex.data.synthetic import PASSKEY_NEEDLE, haystack_prompt, random_passkey
from statex.eval.common import EvalContext, Record, greedy_generate, stable_seed

DEFAULT_LENGTHS = (1024, 2048, 4096)
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
MAX_NEW_TOKENS = 8


def generate_examples(tokenizer, length: int, depth: float, n: int, seed: int):
    """n (prompt ids, passkey) pairs; deterministic in (seed, length, depth)."""
    gen = torch.Generator().manual_seed(stable_seed(seed, length, round(depth * 1000), "passkey"))
    examples = []
    for _ in range(n):
        key = random_passkey(gen)
        ids, _ = haystack_prompt(tokenizer, length, depth, PASSKEY_NEEDLE.format(key=key))
        examples.append((ids, key))
    return examples


def score(output: str, key: str) -> float:
    return float(key in output)


def run(ctx: EvalContext) -> list[Record]:
    lengths = ctx.options.get("lengths") or DEFAULT_LENGTHS
    depths = ctx.options.get("depths") or DEFAULT_DEPTHS
    records = []
    bar = ctx.bar(len(lengths) * len(depths) * ctx.n, "passkey")
    for length in lengths:
        for depth in depths:
            examples = generate_examples(ctx.tokenizer, length, depth, ctx.n, ctx.seed)
            outputs = greedy_generate(ctx, [e[0] for e in examples], MAX_NEW_TOKENS, on_done=bar.update)
            accuracy = sum(score(o, key) for o, (_, key) in zip(outputs, examples)) / len(examples)
            records.append(Record(ctx.model_name, "passkey", f"length={length} depth={depth:.2f}", "accuracy",
                                  accuracy, len(examples), {"length": length, "depth": depth}))
    bar.close()
    return records

