"""Synthetic recall data, generated deterministically from a ``torch.Generator``.

- MQAR (zoology's multi-query associative recall, token level): key-value pairs, then the keys queried again
  later with power-law gaps; the loss and accuracy are taken only on the value after each query key.
- Passkey (the StateX paper's evaluation, as in "Stuffed Mamba"): a 5-digit passkey hidden at a chosen depth in repeated filler text.
- NIAH (RULER's single needle, variant 1): "One of the special magic numbers for {key} is: {value}." in repeated
  noise sentences, then RULER's question and answer prefix; the 7-digit value is the answer.

Labels follow the model's convention: ``labels[t]`` is the token at position t when it is to be predicted
(from position t - 1), else -100.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100

PASSKEY_PREFIX = ("There is an important info hidden inside a lot of irrelevant text. "
                  "Find it and memorize it.\n\n")
PASSKEY_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"
PASSKEY_NEEDLE = "The passkey is {key}. Remember it. {key} is the passkey.\n"
PASSKEY_SUFFIX = "\nWhat is the pass key? The passkey is"

# RULER's single-needle template (github.com/NVIDIA/RULER, synthetic niah): the evaluation's prompts and the
# training sequences of the synthetic kind "niah" share it
NIAH_NEEDLE = "One of the special magic numbers for {key} is: {value}.\n"
NIAH_QUESTION = "\nWhat are all the special magic numbers for {key} mentioned in the provided text?"
NIAH_ANSWER_PREFIX = " The special magic number for {key} mentioned in the provided text is"
NIAH_NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"
NIAH_PREFIX = ("Some special magic numbers are hidden within the following text. Make sure to memorize it. "
               "I will quiz you about the numbers afterwards.\n")
NIAH_KEY_WORDS = ("apple", "river", "violet", "falcon", "marble", "harbor", "cactus", "meadow", "copper", "lantern",
                  "orchid", "glacier", "pepper", "walnut", "thunder", "saffron", "pebble", "canyon", "willow",
                  "quartz")


@dataclass
class MQARSpec:
    """Token ranges and sizes of an MQAR sequence. Keys come from [key_low, key_high), values from
    [value_low, value_high); filler tokens (the positions that are neither pairs nor queries) are drawn from
    the value range (a filler that happened to be a key would overwrite that key's binding)."""

    key_low: int
    key_high: int
    value_low: int
    value_high: int
    power_a: float = 0.01

    @property
    def num_keys(self) -> int:
        """The most pairs one sequence can hold: keys are distinct."""
        return self.key_high - self.key_low

    @classmethod
    def for_vocab(cls, vocab_size: int, power_a: float = 0.01) -> "MQARSpec":
        """zoology's split: keys from [1, V/2), values from [V/2, V)."""
        half = vocab_size // 2
        return cls(1, half, half, vocab_size, power_a)

    @classmethod
    def for_tokenizer(cls, tokenizer, power_a: float = 0.01, keys: int | None = None) -> "MQARSpec":
        """``for_vocab`` over the tokenizer's regular ids: an end-of-document token at the top of the vocabulary
        is left out, so it is never drawn as a key, value or filler. Training and evaluation both use this.
        ``keys``: keys from [1, 1 + keys) and values from the next ``keys`` ids instead (each key token then
        recurs far more often: experiments/pilot-recall-keys/)."""
        vocab = tokenizer.vocab_size
        if tokenizer.eos_token_id == vocab - 1:
            vocab -= 1
        if keys is None:
            return cls.for_vocab(vocab, power_a)
        if keys < 1 or 1 + 2 * keys > vocab:
            raise ValueError(f"MQAR keys {keys}: needs 1 <= keys and 2 x keys + 1 <= {vocab} (the tokenizer's "
                             "regular ids)")
        return cls(1, 1 + keys, 1 + keys, 1 + 2 * keys, power_a)


def mqar_sequence(generator: torch.Generator, seq_len: int, num_pairs: int, spec: MQARSpec):
    """(input_ids [seq_len], labels [seq_len]): "k1 v1 ... kD vD", then filler with the D keys queried once
    each in random order, each query followed by its value (the only labelled positions)."""
    if spec.num_keys < num_pairs:
        raise ValueError(f"{num_pairs} pairs need at least {num_pairs} distinct keys")
    if seq_len < 4 * num_pairs:
        raise ValueError(f"seq_len {seq_len} is too short for {num_pairs} pairs (needs >= {4 * num_pairs})")
    keys = spec.key_low + torch.randperm(spec.key_high - spec.key_low, generator=generator)[:num_pairs]
    values = torch.randint(spec.value_low, spec.value_high, (num_pairs,), generator=generator)
    ids = torch.randint(spec.value_low, spec.value_high, (seq_len,), generator=generator)
    labels = torch.full((seq_len,), IGNORE, dtype=torch.long)
    ids[0:2 * num_pairs:2], ids[1:2 * num_pairs:2] = keys, values
    # query slots: pairs of positions after the context; slot j (gap j) drawn with weight (j+1)^(a-1)
    start = 2 * num_pairs
    slots = (seq_len - start) // 2
    weights = torch.arange(1, slots + 1, dtype=torch.float64) ** (spec.power_a - 1)
    chosen = torch.multinomial(weights, num_pairs, replacement=False, generator=generator)
    order = torch.randperm(num_pairs, generator=generator)
    positions = start + 2 * chosen
    ids[positions], ids[positions + 1] = keys[order], values[order]
    labels[positions + 1] = values[order]
    return ids, labels


def random_passkey(generator: torch.Generator) -> str:
    return str(int(torch.randint(10000, 100000, (1,), generator=generator)))


def haystack_prompt(tokenizer, context_tokens: int, depth: float, needle: str, prefix: str = PASSKEY_PREFIX,
                    filler: str = PASSKEY_FILLER, suffix: str = PASSKEY_SUFFIX, haystack: str | None = None):
    """Token ids of prefix + haystack with ``needle`` inserted at ``depth`` (0 = start, 1 = end) + suffix,
    about ``context_tokens`` long (within one filler sentence). The haystack is ``filler`` repeated, or the
    text ``haystack`` (cut to length). Returns (ids, needle_token_offset)."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    fixed = tokenizer.encode(prefix), tokenizer.encode(needle), tokenizer.encode(suffix)
    budget = max(0, context_tokens - sum(len(part) for part in fixed))
    if haystack is None:
        unit = tokenizer.encode(filler)
        pieces = [unit] * max(1, -(-budget // max(1, len(unit))))
        hay = [t for piece in pieces for t in piece][:budget]
        # cut at a sentence boundary so the needle never lands inside a filler sentence
        boundaries = [i for i in range(0, len(hay) + 1, len(unit))]
    else:
        hay = tokenizer.encode(haystack)
        while len(hay) < budget and hay:
            hay = hay + hay
        hay = hay[:budget]
        boundaries = list(range(len(hay) + 1))
    target = depth * len(hay)
    cut = min(boundaries, key=lambda b: abs(b - target)) if boundaries else 0
    ids = fixed[0] + hay[:cut] + fixed[1] + hay[cut:] + fixed[2]
    return ids, len(fixed[0]) + cut


def passkey_sequence(generator: torch.Generator, tokenizer, seq_len: int, depth: float | None = None):
    """A training example: a passkey prompt followed by the answer, exactly ``seq_len`` tokens, labels on the
    answer tokens only. The depth is uniform in [0, 1] unless given."""
    key = random_passkey(generator)
    if depth is None:
        depth = float(torch.rand((), generator=generator, dtype=torch.float64))
    answer = tokenizer.encode(" " + key)
    prompt, _ = haystack_prompt(tokenizer, seq_len - len(answer), depth, PASSKEY_NEEDLE.format(key=key))
    return _prompt_then_answer(prompt, answer, seq_len, tokenizer.eos_token_id)


def _prompt_then_answer(prompt: list[int], answer: list[int], seq_len: int, pad_id: int):
    """(ids, labels) of exactly ``seq_len`` tokens: the prompt's end, then the answer, labelled alone; left-padded
    when the filler could not fill exactly."""
    ids = prompt[-(seq_len - len(answer)):] + answer
    ids = [pad_id] * (seq_len - len(ids)) + ids
    labels = [IGNORE] * (seq_len - len(answer)) + answer
    return torch.tensor(ids), torch.tensor(labels)


def niah_value(generator: torch.Generator, variant: int = 1) -> str:
    """A needle's value: 7 digits (variants 1 and 2), a UUID (variant 3)."""
    import uuid

    if variant == 3:
        return str(uuid.UUID(int=int(torch.randint(0, 2**62, (1,), generator=generator)) << 64
                             | int(torch.randint(0, 2**62, (1,), generator=generator))))
    return str(int(torch.randint(1_000_000, 10_000_000, (1,), generator=generator)))


def niah_prompt(tokenizer, length: int, needles: list[tuple[float, str]], suffix: str,
                haystack: list[int] | None = None) -> list[int]:
    """NIAH_PREFIX, a haystack with the needles (depth, text) inserted, then ``suffix``: ``length`` tokens when
    the fixed parts fit. ``haystack``: None (NIAH_NOISE repeated; needles go between its lines) or a text's token
    ids (encoded once by the caller), repeated as needed; a needle then goes between two sentences, set off by a
    space as RULER joins them (github.com/NVIDIA/RULER, essay haystack), never inside a word."""
    prefix, tail = tokenizer.encode(NIAH_PREFIX), tokenizer.encode(suffix)
    if haystack is None:
        needle_ids = [(d, tokenizer.encode(text)) for d, text in needles]
    else:
        needle_ids = [(d, tokenizer.encode(" " + text.strip())) for d, text in needles]
    budget = max(0, length - len(prefix) - len(tail) - sum(len(n) for _, n in needle_ids))
    if haystack is None:
        unit = tokenizer.encode(NIAH_NOISE)
        hay = (unit * max(1, -(-budget // len(unit))))[:budget]
        boundaries = list(range(0, len(hay) + 1, len(unit)))
    else:
        hay = (list(haystack) * (budget // len(haystack) + 1))[:budget]
        boundaries = _sentence_boundaries(tokenizer, hay)
    inserts = sorted(((min(boundaries, key=lambda b: abs(b - d * len(hay))), n) for d, n in needle_ids),
                     key=lambda x: x[0])
    out, previous = list(prefix), 0
    for cut, needle in inserts:
        out += hay[previous:cut] + needle
        previous = cut
    return out + hay[previous:] + tail


_SENTENCE_END = (".", "!", "?", '."', '!"', '?"', ".'", "!'", "?'", ".)", "!)", "?)")


def _sentence_boundaries(tokenizer, hay: list[int]) -> list[int]:
    """Where a needle may go in ``hay`` (token ids): 0 and every place where a sentence has ended and the next
    token begins with whitespace (the end too, when the text ends a sentence there); in a text with no such place,
    every word start. The text's last, cut-off sentence is never split."""
    texts = {t: tokenizer.decode([t]) for t in set(hay)}
    ends_sentence = [texts[t].rstrip().endswith(_SENTENCE_END) for t in hay]
    starts_word = [i for i in range(1, len(hay) + 1) if i == len(hay) or texts[hay[i]][:1].isspace()]
    cuts = [i for i in starts_word if ends_sentence[i - 1]] or starts_word[:-1]
    return sorted({0, *cuts})


def niah_min_len(tokenizer) -> int:
    """The shortest training sequence of the kind "niah": the template with no haystack, and the answer."""
    key, value = max(NIAH_KEY_WORDS, key=len), "9" * 7
    return len(niah_prompt(tokenizer, 0, [(0.0, NIAH_NEEDLE.format(key=key, value=value))],
                           NIAH_QUESTION.format(key=key) + NIAH_ANSWER_PREFIX.format(key=key))) + \
        len(tokenizer.encode(" " + value)) + 8  # room for longer tokenizations of other keys and values


def niah_sequence(generator: torch.Generator, tokenizer, seq_len: int, depth: float | None = None):
    """A training example of RULER's single needle (variant 1): the prompt followed by the value, exactly
    ``seq_len`` tokens (left-padded when the noise cannot fill exactly), labels on the value's tokens only. The
    depth is uniform in [0, 1] unless given."""
    key = NIAH_KEY_WORDS[int(torch.randint(len(NIAH_KEY_WORDS), (1,), generator=generator))]
    value = niah_value(generator)
    if depth is None:
        depth = float(torch.rand((), generator=generator, dtype=torch.float64))
    answer = tokenizer.encode(" " + value)
    prompt = niah_prompt(tokenizer, seq_len - len(answer), [(depth, NIAH_NEEDLE.format(key=key, value=value))],
                         NIAH_QUESTION.format(key=key) + NIAH_ANSWER_PREFIX.format(key=key))
    return _prompt_then_answer(prompt, answer, seq_len, tokenizer.eos_token_id)
