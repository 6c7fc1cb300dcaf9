"""What the trainer measures on data it never trains on, at every evaluation step.

- ``heldout_loss``: the mean next-token loss over the held-out text sequences (or, without text, over synthetic
  sequences of the run's mixture drawn from a stream of their own).
- ``source_probes``: per synthetic source (an MQAR bucket, passkey), the mean loss and the share of labelled tokens
  predicted exactly (argmax) on ``probe_sequences`` fresh sequences of that source alone. A recall curriculum is
  read from these: MQAR's loss sits at ln(number of values) until the model starts to recall, and the accuracy is
  the answer accuracy the MQAR and passkey evaluations score, on the training format.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter
from typing import Any, Callable, Iterator

import torch

from statex.data.dataset import SyntheticSource, TrainStream
from statex.data.synthetic import IGNORE

HELDOUT_SEED_OFFSET = 7_919  # held-out synthetic streams: seeds the training stream never uses


def source_labels(sources: list[SyntheticSource], seq_len: int) -> list[str]:
    """A readable, unique name per source, e.g. ``mqar 4-4 pairs T=64`` or ``passkey T=256``."""
    names = []
    for source in sources:
        length = source.seq_len or seq_len
        pairs = f" {source.num_pairs[0]}-{source.num_pairs[1]} pairs" if source.kind == "mqar" else ""
        weight = f" x{source.loss_weight:g}" if source.loss_weight != 1 else ""
        names.append(f"{source.kind}{pairs} T={length}{weight}")
    counts, seen = Counter(names), Counter()
    unique = []
    for name in names:
        seen[name] += 1
        unique.append(f"{name} #{seen[name]}" if counts[name] > 1 else name)
    return unique


def _sums(forward: Callable, ids: torch.Tensor, labels: torch.Tensor) -> tuple[float, float, float]:
    """(summed loss, exact argmax hits, labelled tokens) of one batch."""
    logits = forward(ids).float()
    targets = labels[:, 1:]
    predictions = logits[:, :-1]
    labelled = targets != IGNORE
    loss = torch.nn.functional.cross_entropy(predictions.flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                                             reduction="sum")
    hits = ((predictions.argmax(-1) == targets) & labelled).sum()
    return float(loss), float(hits), float(labelled.sum())


def _rank_batches(count: int, batch_size: int, env) -> Iterator[tuple[range, bool]]:
    """This rank's (indices, counted) batches of ``count`` sequences. Every rank gets the same number of batches,
    so that a sharded (FSDP) model runs its collectives alike on all ranks; a rank whose share ran out repeats
    sequence 0 with ``counted`` False (its result is dropped)."""
    stride = env.world * batch_size
    for round_start in range(0, count, stride):
        start = round_start + env.rank * batch_size
        if start < count:
            yield range(start, min(start + batch_size, count)), True
        else:
            yield range(0, 1), False


@contextlib.contextmanager
def _evaluating(model: torch.nn.Module):
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train()


def heldout_loss(model, forward: Callable, stream: TrainStream, count: int, seq_len: int, seed: int,
                 batch_size: int, env) -> float | None:
    """``forward(ids) -> logits`` on the training device (autocast included); ``env`` the run's
    distributed environment (each rank takes its share; the sums are reduced)."""
    if count == 0:
        return None
    packed = stream.data
    if packed is not None:
        count = min(count, packed.heldout_sequences)
    else:
        held = TrainStream(None, seq_len, seed + HELDOUT_SEED_OFFSET, stream.tokenizer, stream.synthetic)
    loss_sum = tokens = 0.0
    with _evaluating(model):
        for indices, counted in _rank_batches(count, batch_size, env):
            if packed is not None:
                ids = torch.stack([packed.heldout(i) for i in indices])
                labels = ids.clone()
            else:
                ids, labels = held.batch(indices.start, len(indices))
            loss, _, labelled = _sums(forward, ids.to(env.device), labels.to(env.device))
            if counted:
                loss_sum, tokens = loss_sum + loss, tokens + labelled
    loss_sum, tokens = env.sum(loss_sum, tokens)
    return loss_sum / tokens if tokens else None


def source_probes(model, forward: Callable, stream: TrainStream, count: int, seq_len: int, seed: int,
                  batch_size: int, env) -> dict[str, dict[str, Any]]:
    """{source label: {"loss", "accuracy", "tokens"}} over ``count`` sequences of each synthetic source with a
    positive weight; the same sequences at every evaluation of a run."""
    sources = [s for s in stream.synthetic if s.weight > 0]
    if count == 0 or not sources:
        return {}
    results = {}
    with _evaluating(model):
        for index, (label, source) in enumerate(zip(source_labels(sources, seq_len), sources)):
            alone = TrainStream(None, seq_len, seed + HELDOUT_SEED_OFFSET * (index + 2), stream.tokenizer,
                                [dataclasses.replace(source, weight=1.0)])
            loss_sum = hits = tokens = 0.0
            for indices, counted in _rank_batches(count, batch_size, env):
                ids, labels = alone.batch(indices.start, len(indices))
                loss, hit, labelled = _sums(forward, ids.to(env.device), labels.to(env.device))
                if counted:
                    loss_sum, hits, tokens = loss_sum + loss, hits + hit, tokens + labelled
            loss_sum, hits, tokens = env.sum(loss_sum, hits, tokens)
            if tokens:
                results[label] = {"loss": loss_sum / tokens, "accuracy": hits / tokens, "tokens": int(tokens)}
    return results
