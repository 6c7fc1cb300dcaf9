"""Passkey retrieval (the StateX paper's evaluation, as in "Stuffed Mamba"): a 5-digit passkey hidden at a depth in
repeated filler; greedy decoding of a few tokens; correct when the passkey appears in the output."""
from __future__ import annotations

import torch

from statex.data.synthetic import PASSKEY_NEEDLE, haystack_prompt, passkey_sequence, random_passkey
from statex.eval.common import EvalContext, Record, greedy_generate, stable_seed, token_logprobs

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
    lengths = ctx.options.lengths or DEFAULT_LENGTHS
    depths = ctx.options.depths or DEFAULT_DEPTHS
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


@torch.no_grad()
def teacher_forced(model, tokenizer, model_name: str, lengths, n: int, seed: int, batch_size: int,
                   chunk: int = 2048, depth: float = 0.5) -> list[Record]:
    """A diagnostic beside the task: the share of the passkey's answer tokens predicted (argmax) from the prompt
    and the answer so far, one forward pass per batch, no generation, on the training sequences' format
    (``passkey_sequence``). High here but zero in the task points at generation; at the format baseline (each
    record's ``params["baseline"]``, see ``format_baseline``) and zero in the task, at learning."""
    baseline = format_baseline(tokenizer, seed=seed)
    records = []
    for length in lengths:
        gen = torch.Generator().manual_seed(stable_seed(seed, length, round(depth * 1000), "passkey-forced"))
        pairs = [passkey_sequence(gen, tokenizer, length, depth) for _ in range(n)]
        correct, total = answer_token_hits(model, [(i.tolist(), lab.tolist()) for i, lab in pairs], batch_size, chunk)
        records.append(Record(model_name, "passkey_forced", f"length={length} depth={depth:.2f}", "token_accuracy",
                              correct / max(1, total), n, {"length": length, "depth": depth,
                                                                          "baseline": baseline}))
    return records


@torch.no_grad()
def answer_token_hits(model, rows: list[tuple[list[int], list[int]]], batch_size: int, chunk: int = 2048,
                      pad: int = 0) -> tuple[int, int]:
    """(labelled tokens predicted by argmax, labelled tokens) over rows of (ids, labels), one forward pass per
    batch; rows of unequal length are right-padded with ``pad`` (no real position sees it) and -100 labels."""
    from statex.eval.tasks.mqar import score

    device = next(model.parameters()).device
    correct = total = 0
    for start in range(0, len(rows), batch_size):
        group = rows[start:start + batch_size]
        width = max(len(ids) for ids, _ in group)
        ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in group], device=device)
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in group], device=device)
        hits, count = score(token_logprobs(model, ids, chunk=chunk, want="argmax"), labels)
        correct, total = correct + hits, total + count
    return correct, total


def format_baseline(tokenizer, n: int = 2000, seed: int = 0, sample=random_passkey, name: str = "passkey") -> float:
    """The teacher-forced token accuracy of a model that knows the answer's format but not the passkey: at each
    position of the tokenized answer it predicts the token most frequent there (fitted on n random passkeys,
    scored on n others; ``sample``: another task's answers, drawn from a torch.Generator). A byte-level BPE that
    writes " 12345" as " ", then one digit per token, gives about 0.25: the space is free and each digit is a
    1-in-10 guess, so a model must beat this to have read the needle."""
    from collections import Counter

    gen = torch.Generator().manual_seed(stable_seed(seed, f"{name}-format-baseline"))
    fit, held = ([tokenizer.encode(" " + sample(gen)) for _ in range(n)] for _ in range(2))
    majority = {}
    for k in range(max(map(len, fit))):
        counts = Counter(ids[k] for ids in fit if len(ids) > k)
        majority[k] = counts.most_common(1)[0][0]
    hits = sum(majority.get(k) == token for ids in held for k, token in enumerate(ids))
    return hits / sum(map(len, held))
