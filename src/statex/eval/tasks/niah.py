"""RULER-style needle in a haystack (single-needle variants 1, 2, 3; multi-key as an option).

Needle "One of the special magic numbers for {key} is: {value}." at a depth; the question and answer prefix of
RULER; single_1: the repeated-sentence haystack, single_2: any local text (``--haystack FILE``, e.g. essays),
single_3: UUID values instead of 7-digit numbers. Score: the fraction of references contained in the output.
multikey: ``--niah-keys K`` needles with distinct keys, one of them asked for.
"""
from __future__ import annotations

from pathlib import Path

import torch

from statex.data.synthetic import (NIAH_ANSWER_PREFIX, NIAH_KEY_WORDS, NIAH_NEEDLE, NIAH_QUESTION, niah_prompt,
                                   niah_value)
from statex.eval.common import EvalContext, Record, fraction_contained, greedy_generate, stable_seed
from statex.errors import StatexError

DEFAULT_LENGTHS = (1024, 2048, 4096)
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def generate_examples(tokenizer, length: int, depth: float, n: int, seed: int, variant: int = 1, keys: int = 1,
                      haystack: str | list[int] | None = None):
    """n (prompt ids, references) pairs. The asked needle sits at ``depth``; other keys' needles (multi-key)
    are spread evenly through the haystack (text, or its token ids: a caller with many cells encodes it once)."""
    if variant == 2 and haystack is None:
        raise StatexError("niah variant 2 (essay haystack) needs --haystack FILE (any long local text)")
    if isinstance(haystack, str) and variant == 2:
        haystack = encode_haystack(tokenizer, haystack)
    gen = torch.Generator().manual_seed(stable_seed(seed, length, round(depth * 1000), variant, keys, "niah"))
    examples = []
    for _ in range(n):
        names = [NIAH_KEY_WORDS[int(i)] for i in torch.randperm(len(NIAH_KEY_WORDS), generator=gen)[:keys]]
        values = [niah_value(gen, variant) for _ in names]
        needles = [(depth, NIAH_NEEDLE.format(key=names[0], value=values[0]))]
        needles += [((i + 1) / keys, NIAH_NEEDLE.format(key=k, value=v)) for i, (k, v) in enumerate(zip(names[1:],
                                                                                               values[1:]))]
        suffix = NIAH_QUESTION.format(key=names[0]) + NIAH_ANSWER_PREFIX.format(key=names[0])
        ids = niah_prompt(tokenizer, length, needles, suffix, None if variant != 2 else haystack)
        examples.append((ids, [values[0]]))
    return examples


def encode_haystack(tokenizer, text: str) -> list[int]:
    """The haystack text's token ids, from a space as RULER's context begins (and as its sentences are joined):
    a needle set before its first sentence is then followed by a word start, as everywhere else."""
    ids = tokenizer.encode(" " + text.lstrip()) if text.strip() else []
    if not ids:
        raise StatexError("the haystack text is empty")
    return ids


def run(ctx: EvalContext) -> list[Record]:
    lengths = ctx.options.lengths or DEFAULT_LENGTHS
    depths = ctx.options.depths or DEFAULT_DEPTHS
    variants = ctx.options.niah_variants or (1,)
    keys = ctx.options.niah_keys or 1
    haystack_path = ctx.options.haystack
    haystack = Path(haystack_path).read_text(errors="replace") if haystack_path else None
    if 2 in variants and haystack is None:
        raise StatexError("niah variant 2 (essay haystack) needs --haystack FILE (any long local text)")
    haystack_ids = encode_haystack(ctx.tokenizer, haystack) if haystack is not None and 2 in variants else None
    records = []
    bar = ctx.bar(len(variants) * len(lengths) * len(depths) * ctx.n, "niah")
    for variant in variants:
        max_new = 40 if variant == 3 else 16
        for length in lengths:
            for depth in depths:
                examples = generate_examples(ctx.tokenizer, length, depth, ctx.n, ctx.seed, variant, keys,
                                             haystack_ids)
                outputs = greedy_generate(ctx, [e[0] for e in examples], max_new, on_done=bar.update)
                value = sum(fraction_contained(o, refs) for o, (_, refs) in zip(outputs, examples)) / len(examples)
                name = f"niah_single_{variant}" if keys == 1 else f"niah_multikey_{variant}"
                records.append(Record(ctx.model_name, name, f"length={length} depth={depth:.2f}", "accuracy",
                                      value, len(examples), {"length": length, "depth": depth, "keys": keys}))
    bar.close()
    return records


@torch.no_grad()
def teacher_forced(model, tokenizer, model_name: str, lengths, n: int, seed: int, batch_size: int,
                   chunk: int = 2048, depth: float = 0.5, variants=(1,), haystack: str | None = None) -> list[Record]:
    """Share of the needle's value tokens predicted by argmax when the prompt is followed by the value itself
    (one forward pass, no generation), per variant and length, as ``passkey.teacher_forced`` does for passkey:
    above the format baseline (``params["baseline"]``) a model reads the needle, whatever it then generates."""
    from statex.eval.tasks.passkey import answer_token_hits, format_baseline

    pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    haystack_ids = encode_haystack(tokenizer, haystack) if haystack is not None and 2 in variants else None
    records = []
    for variant in variants:
        baseline = format_baseline(tokenizer, seed=seed, sample=lambda g, v=variant: niah_value(g, v),
                                   name=f"niah{variant}")
        for length in lengths:
            rows = []
            for ids, (value,) in generate_examples(tokenizer, length, depth, n, seed, variant, 1, haystack_ids):
                answer = tokenizer.encode(" " + value)
                rows.append((ids + answer, [-100] * len(ids) + answer))
            correct, total = answer_token_hits(model, rows, batch_size, chunk, pad)
            records.append(Record(model_name, f"niah_single_{variant}_forced", f"length={length} depth={depth:.2f}",
                                  "token_accuracy", correct / max(1, total), n,
                                  {"length": length, "depth": depth, "baseline": baseline,
                                   "tokens": sum(len(ids) for ids, _ in rows)}))
    return records
