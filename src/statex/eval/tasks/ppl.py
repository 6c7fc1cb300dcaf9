"""Held-out loss and perplexity of a local text file, overall and by position bucket (long-context behaviour).

The text is tokenised, cut into windows of the largest ``--lengths`` value (one window per example, at most
``--n``), and scored in pieces with the recurrent state carried. Buckets: [0, 128), [128, 256), [256, 512), ...
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from statex.errors import StatexError
from statex.eval.common import EvalContext, Record, token_logprobs


def buckets(length: int, first: int = 128) -> list[tuple[int, int]]:
    edges, edge = [0], first
    while edge < length:
        edges.append(edge)
        edge *= 2
    edges.append(length)
    return list(zip(edges[:-1], edges[1:]))


SAFE_MARGIN = 64  # tokens dropped before the cut of a partial encoding: only the last pre-token can differ


def leading_tokens(tokenizer, text: str, needed: int) -> list[int]:
    """At least ``needed`` leading tokens of ``text`` (all of them if it has fewer), equal to those of encoding
    the whole text: a prefix of the text is encoded, growing until it holds enough, and the tokens near its cut
    (where the last word may have been split) are dropped. A held-out file of gigabytes is thus not encoded
    whole for the 262K tokens of 64 windows (the whole 4.3M-character file took 2.3 s per model)."""
    chars = 6 * (needed + SAFE_MARGIN)  # a BPE of 8K tokens averages about 4 characters per token
    while chars < len(text):
        ids = tokenizer.encode(text[:chars])
        if len(ids) - SAFE_MARGIN >= needed:
            return ids[:len(ids) - SAFE_MARGIN]
        chars *= 2
    return tokenizer.encode(text)


def run(ctx: EvalContext) -> list[Record]:
    path = ctx.options.ppl_file
    if not path:
        raise StatexError("task ppl needs --ppl-file FILE (local text)")
    text = Path(path).read_text(errors="replace")
    length = max(ctx.options.lengths or [2048])
    ids = leading_tokens(ctx.tokenizer, text, length * ctx.n)
    windows = [ids[i:i + length] for i in range(0, len(ids) - length + 1, length)][:ctx.n]
    if not windows:
        raise StatexError(f"{path}: {len(ids)} tokens, fewer than one window of {length}")
    device = next(ctx.model.parameters()).device
    losses = []
    bar = ctx.bar(len(windows), "ppl")
    for start in range(0, len(windows), ctx.batch_size):
        batch = torch.tensor(windows[start:start + ctx.batch_size], device=device)
        losses.append(token_logprobs(ctx.model, batch, ctx.prefill_chunk).cpu())
        bar.update(batch.shape[0])
    bar.close()
    losses = torch.cat(losses)  # [windows, length - 1]; column t is the loss of predicting token t + 1
    name = Path(path).stem
    mean = float(losses.mean())
    records = [Record(ctx.model_name, "ppl", f"file={name} all", "loss", mean, losses.numel(), {"length": length}),
               Record(ctx.model_name, "ppl", f"file={name} all", "perplexity", math.exp(min(mean, 50)),
                      losses.numel(), {"length": length})]
    for lo, hi in buckets(length):
        part = losses[:, max(0, lo - 1):hi - 1]
        if part.numel():
            records.append(Record(ctx.model_name, "ppl", f"file={name} positions={lo}-{hi}", "loss",
                                  float(part.mean()), part.numel(), {"start": lo, "end": hi}))
    return records
