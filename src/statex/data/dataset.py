"""Packed training data: fixed-length sequences cut from a token cache, a held-out slice, a deterministic
shuffled stream that every process reads a disjoint part of, and synthetic sources mixed in by weight.

Positions: the stream is infinite; global position p is sequence perm_e[p mod n] of epoch e = p // n, where
perm_e is a permutation seeded by (seed, e). An optimizer step of a run with W processes, per-process batch b
and g accumulation steps consumes W*b*g positions; process r's micro-batch m of the step starting at p reads
positions p + (m*W + r)*b ... + b - 1. So the data position of a run is one integer, saved in checkpoints,
and 2 processes with batch b read exactly the sequences that 1 process with batch 2b reads.

Sources of several lengths (e.g. zoology's MQAR mixture: most sequences short with few pairs, some long with many)
are trained in length-bucketed batches: every optimizer step draws one length, with probability proportional to
the summed weights of the sources of that length, from the step's first position, so every micro-batch and
process of the step shares it; within the step each sequence draws its source among those of that length. Whole
batches of one length keep every kernel as it is (no padding, and no state reset inside a sequence, which the
chunked kernels would need for packed sequences), and the mixture's proportions hold over steps as zoology's
shuffled per-setting batches do. A source's ``loss_weight`` scales its labelled tokens in the loss (an MQAR
sequence labels only its answers; beside fully labelled text they would otherwise count for little).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from statex.data.cache import open_token_cache
from statex.data.synthetic import IGNORE, MQARSpec, mqar_sequence, niah_min_len, niah_sequence, passkey_sequence
from statex.errors import StatexError

SYNTHETIC_KINDS = ("mqar", "passkey", "niah")
PASSKEY_MIN_LEN = 64
MAX_SOURCE_LEN = 2**24  # a source's own sequence length; the run's --seq-len is bounded by the memory check


@dataclass
class SyntheticSource:
    kind: str  # "mqar" | "passkey" | "niah"
    weight: float
    num_pairs: tuple[int, int] = (4, 32)  # mqar: pairs drawn uniformly in this range (inclusive)
    mqar: MQARSpec | None = None  # mqar: token ranges (default: zoology's split of the tokenizer's vocab)
    keys: int | None = None  # mqar: keys from [1, 1 + keys), values from the next keys ids (MQARSpec.for_tokenizer)
    seq_len: int | None = None  # this source's sequence length (default the run's seq_len)
    loss_weight: float = 1.0  # the weight of its labelled tokens in the training loss


@dataclass
class PackedData:
    tokens: np.ndarray
    seq_len: int
    heldout_sequences: int
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        total = len(self.tokens) // self.seq_len
        if total < 2:
            raise StatexError(f"the corpus holds {len(self.tokens)} tokens: fewer than 2 sequences of "
                              f"{self.seq_len}; use more data or a shorter --seq-len")
        self.heldout_sequences = min(self.heldout_sequences, total - 1)
        self.train_sequences = total - self.heldout_sequences

    def sequence(self, index: int) -> torch.Tensor:
        start = index * self.seq_len
        return torch.from_numpy(self.tokens[start:start + self.seq_len].astype(np.int64))

    def heldout(self, index: int) -> torch.Tensor:
        return self.sequence(self.train_sequences + index)


class TrainStream:
    """Maps global positions to (input_ids, labels) sequences, deterministically from ``seed``."""

    def __init__(self, data: PackedData | None, seq_len: int, seed: int, tokenizer=None,
                 synthetic: list[SyntheticSource] | None = None, text_weight: float = 1.0,
                 text_loss_weight: float = 1.0):
        self.data, self.seq_len, self.seed, self.tokenizer = data, seq_len, seed, tokenizer
        self.synthetic = list(synthetic or [])
        # entries: (sequence length, sampling weight, loss weight, source or None for the text)
        self.entries = ([(seq_len, text_weight, text_loss_weight, None)] if data is not None else []) + [
            (s.seq_len or seq_len, s.weight, s.loss_weight, s) for s in self.synthetic]
        weights = [e[1] for e in self.entries]
        if not weights or sum(weights) <= 0 or any(w < 0 for w in weights):
            raise StatexError("data mixture weights must be non-negative with a positive sum")
        for length, _, _, source in self.entries:
            if source is not None and source.kind == "mqar" and length < 4:
                raise StatexError("MQAR sequences need a length >= 4")
            if source is not None and source.kind == "passkey" and length < PASSKEY_MIN_LEN:
                raise StatexError(f"passkey sequences need a length >= {PASSKEY_MIN_LEN}")
            if source is not None and source.kind == "niah" and tokenizer is not None \
                    and length < niah_min_len(tokenizer):
                raise StatexError(f"niah sequences need a length >= {niah_min_len(tokenizer)} with this tokenizer")
        lengths = sorted({e[0] for e in self.entries if e[1] > 0})
        self.groups = [[i for i, e in enumerate(self.entries) if e[0] == length] for length in lengths]
        if len({e[0] for e in self.entries}) == 1:  # one length: every entry, zero weights too (as one mixture)
            self.groups = [list(range(len(self.entries)))]
        group_weights = torch.tensor([sum(self.entries[i][1] for i in g) for g in self.groups], dtype=torch.float64)
        self.group_cumulative = group_weights.cumsum(0) / group_weights.sum()
        self.cumulative = [torch.tensor([self.entries[i][1] for i in g], dtype=torch.float64).cumsum(0)
                           / sum(self.entries[i][1] for i in g) for g in self.groups]
        self._perm_epoch, self._perm = None, None

    @property
    def lengths(self) -> list[int]:
        """The sequence lengths a batch can have (one per length bucket)."""
        return [self.entries[g[0]][0] for g in self.groups]

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._perm_epoch != epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.data.train_sequences, generator=gen)
            self._perm_epoch = epoch
        return self._perm

    def group(self, key: int) -> int:
        """The length bucket of the batch whose first position is ``key``."""
        if len(self.groups) == 1:
            return 0
        gen = torch.Generator().manual_seed((self.seed * 40_503 + key * 2_246_822_519 + 1) % (2**63))
        draw = torch.rand((), generator=gen, dtype=torch.float64)
        return int(torch.searchsorted(self.group_cumulative, draw, right=True).clamp(max=len(self.groups) - 1))

    def _example(self, position: int, group: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        gen = torch.Generator().manual_seed((self.seed * 2_654_435_761 + position) % (2**63))
        cumulative = self.cumulative[group]
        pick = int(torch.searchsorted(cumulative, torch.rand((), generator=gen, dtype=torch.float64),
                                      right=True).clamp(max=len(cumulative) - 1))
        entry = self.groups[group][pick]
        length, _, _, source = self.entries[entry]
        if source is None:
            n = self.data.train_sequences
            ids = self.data.sequence(int(self._permutation(position // n)[position % n]))
            return ids, ids.clone(), entry
        if source.kind == "mqar":
            high = min(source.num_pairs[1], length // 4)  # an MQAR sequence needs 4 positions per pair
            low = min(source.num_pairs[0], high)
            pairs = int(torch.randint(low, high + 1, (1,), generator=gen))
            spec = source.mqar or MQARSpec.for_tokenizer(self.tokenizer, keys=source.keys)
            return (*mqar_sequence(gen, length, pairs, spec), entry)
        if source.kind == "niah":
            return (*niah_sequence(gen, self.tokenizer, length), entry)
        return (*passkey_sequence(gen, self.tokenizer, length), entry)

    def example(self, position: int, key: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The sequence at ``position`` in the length bucket of the batch starting at ``key`` (default
        ``position``)."""
        ids, labels, _ = self._example(position, self.group(position if key is None else key))
        return ids, labels

    def weighted_batch(self, start: int, size: int, key: int | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids [size, T], labels [size, T], loss weights [size]) of positions start .. start + size - 1,
        all of the length bucket drawn for ``key`` (the first position of the optimizer step; default start)."""
        group = self.group(start if key is None else key)
        examples = [self._example(start + i, group) for i in range(size)]
        weights = torch.tensor([self.entries[e[2]][2] for e in examples], dtype=torch.float32)
        return torch.stack([e[0] for e in examples]), torch.stack([e[1] for e in examples]), weights

    def batch(self, start: int, size: int, key: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        ids, labels, _ = self.weighted_batch(start, size, key)
        return ids, labels


def parse_synthetic(spec: str | list | None) -> list[SyntheticSource]:
    """``"mqar:0.3,passkey:0.1"`` or a list of dicts ({kind, weight, num_pairs, keys, seq_len, loss_weight}) from a
    config file."""
    if not spec:
        return []
    items = spec if isinstance(spec, list) else [part for part in str(spec).split(",") if part.strip()]
    sources = []
    for item in items:
        if not isinstance(item, (dict, str)):
            raise StatexError(f"synthetic source {item!r:.60}: expected kind:weight or a mapping with kind")
        if isinstance(item, dict):
            kind, weight = item.get("kind"), item.get("weight", 1.0)
            extra = {k: v for k, v in item.items() if k not in ("kind", "weight")}
        else:
            kind, _, weight = str(item).partition(":")
            weight, extra = (weight or "1"), {}
        if kind not in SYNTHETIC_KINDS:
            raise StatexError(f"unknown synthetic source {kind!r} (choose from {', '.join(SYNTHETIC_KINDS)})")
        try:
            weight = float(weight) if not isinstance(weight, bool) else math.nan
        except (TypeError, ValueError, OverflowError):
            weight = math.nan
        if not (math.isfinite(weight) and weight >= 0):
            raise StatexError(f"synthetic source {kind}: the weight must be a finite number >= 0, got {item!r:.60}")
        source = SyntheticSource(kind, weight)
        if "num_pairs" in extra:
            pair = extra.pop("num_pairs")
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2
                    and all(isinstance(v, int) and not isinstance(v, bool) for v in pair)):
                raise StatexError(f"synthetic source {kind}: num_pairs must be a list [low, high] of integers, "
                                  f"got {pair!r:.60}")
            source.num_pairs = (pair[0], pair[1])
            if not 1 <= source.num_pairs[0] <= source.num_pairs[1]:
                raise StatexError(f"synthetic source {kind}: num_pairs {list(pair)} must be 1 <= low <= high")
        if "seq_len" in extra:
            source.seq_len = extra.pop("seq_len")
            if not isinstance(source.seq_len, int) or isinstance(source.seq_len, bool) or not 1 <= source.seq_len \
                    <= MAX_SOURCE_LEN:
                raise StatexError(f"synthetic source {kind}: seq_len must be an integer in [1, {MAX_SOURCE_LEN:,}], "
                                  f"got {source.seq_len!r:.60}")
        if "loss_weight" in extra:
            value = extra.pop("loss_weight")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value)
                                                                                       and value >= 0):
                raise StatexError(f"synthetic source {kind}: loss_weight must be a finite number >= 0, "
                                  f"got {value!r:.60}")
            source.loss_weight = float(value)
        if "keys" in extra and kind == "mqar":
            source.keys = extra.pop("keys")
            if not isinstance(source.keys, int) or isinstance(source.keys, bool) or source.keys < 1:
                raise StatexError(f"synthetic source mqar: keys must be a positive integer, got {source.keys!r}")
        if extra:
            raise StatexError(f"synthetic source {kind}: unknown field(s) {', '.join(sorted(extra))}")
        sources.append(source)
    return sources


def sequence_lengths(seq_len: int, sources: list[SyntheticSource], text: bool) -> list[int]:
    """The lengths a run's batches can have: each source's own (default ``seq_len``), and ``seq_len`` for text."""
    return sorted({s.seq_len or seq_len for s in sources} | ({seq_len} if text else set()))


def mean_sequence_length(seq_len: int, sources: list[SyntheticSource], text_weight: float | None = None) -> float:
    """The expected length of a training sequence: the sources' lengths weighted by their sampling weights
    (``text_weight``: the text's weight, None without text)."""
    entries = ([(seq_len, text_weight)] if text_weight is not None else []) + [
        (s.seq_len or seq_len, s.weight) for s in sources]
    total = sum(w for _, w in entries)
    return sum(length * w for length, w in entries) / total if total > 0 else float(seq_len)


def check_synthetic(sources: list[SyntheticSource], tokenizer, seq_len: int) -> None:
    """Errors of a synthetic mixture that only the tokenizer reveals, raised before any training: an MQAR
    source's largest pair count (as many as fit ``seq_len``) needs that many distinct keys; each kind needs room
    in a sequence."""
    for source in sources:
        length = source.seq_len or seq_len
        what = "--seq-len" if source.seq_len is None else "seq_len"
        if source.kind == "passkey" and length < PASSKEY_MIN_LEN:
            raise StatexError(f"synthetic passkey sequences need {what} >= {PASSKEY_MIN_LEN}, got {length}")
        if source.kind == "niah" and length < niah_min_len(tokenizer):
            raise StatexError(f"synthetic niah sequences need {what} >= {niah_min_len(tokenizer)} with this tokenizer "
                              f"(RULER's template and the answer), got {length}")
        if source.kind != "mqar":
            continue
        if length < 4:
            raise StatexError(f"synthetic MQAR sequences need {what} >= 4 (4 positions per pair), got {length}")
        try:
            spec = source.mqar or MQARSpec.for_tokenizer(tokenizer, keys=source.keys)
        except ValueError as exc:
            raise StatexError(f"synthetic mqar: {exc}") from None
        pairs = min(source.num_pairs[1], length // 4)
        if pairs > spec.num_keys:
            raise StatexError(f"synthetic mqar: up to {pairs} pairs need {pairs} distinct keys, but this tokenizer "
                              f"({tokenizer.vocab_size} tokens) gives {spec.num_keys}" + (
                                  f" (keys: {source.keys})" if source.keys else " (the lower half of the vocabulary)")
                              + "; lower num_pairs or use a larger tokenizer")


def load_packed(cache_path, seq_len: int, heldout_sequences: int) -> PackedData:
    tokens, meta = open_token_cache(cache_path)
    return PackedData(tokens, seq_len, heldout_sequences, meta)


__all__ = ["IGNORE", "PackedData", "SyntheticSource", "TrainStream", "check_synthetic", "load_packed",
           "mean_sequence_length", "parse_synthetic", "sequence_lengths"]
