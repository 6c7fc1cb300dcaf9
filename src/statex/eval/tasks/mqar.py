"""MQAR (zoology's multi-query associative recall) at the token level over a grid of sequence length x number
of key-value pairs; accuracy on the value positions only (one forward pass, argmax)."""
from __future__ import annotations

import torch

from statex.data.synthetic import MQARSpec, mqar_sequence
from statex.errors import StatexError
from statex.eval.common import EvalContext, Record, stable_seed, token_logprobs

DEFAULT_LENGTHS = (256, 512)
DEFAULT_PAIRS = (8, 16, 32, 64)


def spec_for(tokenizer, keys: int | None = None) -> MQARSpec:
    """The same key / value split the trainer's synthetic MQAR uses (``MQARSpec.for_tokenizer``; ``keys`` as
    a synthetic source's ``keys``: evaluate a model on the key range it was trained on)."""
    try:
        return MQARSpec.for_tokenizer(tokenizer, keys=keys)
    except ValueError as exc:
        raise StatexError(f"--mqar-keys: {exc}") from None


def generate_examples(tokenizer, length: int, pairs: int, n: int, seed: int, keys: int | None = None):
    gen = torch.Generator().manual_seed(stable_seed(seed, length, pairs, "mqar"))
    spec = spec_for(tokenizer, keys)
    return [mqar_sequence(gen, length, pairs, spec) for _ in range(n)]


def score(predictions: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(correct, total) over labelled positions; ``predictions[t]`` is the argmax at position t."""
    mask = labels[:, 1:] != -100
    correct = (predictions[:, :-1] == labels[:, 1:]) & mask
    return int(correct.sum()), int(mask.sum())


def run(ctx: EvalContext) -> list[Record]:
    lengths = ctx.options.mqar_lengths or ctx.options.lengths or DEFAULT_LENGTHS
    pairs_grid = ctx.options.pairs or DEFAULT_PAIRS
    device = next(ctx.model.parameters()).device
    records = []
    cells = [(length, pairs) for length in lengths for pairs in pairs_grid if 4 * pairs <= length]
    bar = ctx.bar(len(cells) * ctx.n, "mqar")
    for length, pairs in cells:
        examples = generate_examples(ctx.tokenizer, length, pairs, ctx.n, ctx.seed, ctx.options.mqar_keys)
        correct = total = 0
        for start in range(0, len(examples), ctx.batch_size):
            batch = examples[start:start + ctx.batch_size]
            ids = torch.stack([e[0] for e in batch]).to(device)
            labels = torch.stack([e[1] for e in batch]).to(device)
            predictions = token_logprobs(ctx.model, ids, ctx.prefill_chunk, want="argmax")
            c, t = score(predictions, labels)
            correct, total = correct + c, total + t
            bar.update(len(batch))
        records.append(Record(ctx.model_name, "mqar", f"length={length} pairs={pairs}", "accuracy",
                              correct / total, len(examples), {"length": length, "pairs": pairs}))
    bar.close()
    return records
