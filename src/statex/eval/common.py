"""Shared evaluation machinery: result records, batched greedy generation, chunked scoring passes, scorers."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import torch
from tqdm import tqdm


@dataclass
class Record:
    """One number of one model on one task setting (the schema of results.json)."""

    model: str
    task: str
    setting: str  # human-readable, e.g. "length=4096 depth=0.50"
    metric: str  # e.g. "accuracy", "loss"
    value: float  # accuracies in [0, 1]
    n: int  # examples (or tokens, for losses) behind the value
    params: dict[str, Any] = field(default_factory=dict)  # the setting's numbers (for plots)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EvalContext:
    """What every task gets: the model under test, its tokenizer and the run's options."""

    model: Any
    model_name: str
    tokenizer: Any
    seed: int = 0
    n: int = 20
    batch_size: int = 8
    prefill_chunk: int = 2048
    progress: bool = True
    options: Any = None  # TaskOptions (statex.eval.config)

    def bar(self, total: int, desc: str):
        return tqdm(total=total, desc=f"{self.model_name}: {desc}", unit="ex", disable=not self.progress,
                    leave=False, dynamic_ncols=True)


def parse_length(text: str | int) -> int:
    """``"4k"`` -> 4096, ``"512"`` -> 512."""
    if isinstance(text, int):
        return text
    value = text.strip().lower()
    scale = 1024 if value.endswith("k") else 1
    number = float(value.rstrip("k")) * scale
    if not number.is_integer():  # NaN, infinities and fractions of a token
        raise ValueError(f"not a whole number of tokens: {text!r}")
    return int(number)


def contains_any(output: str, answers: Iterable[str]) -> bool:
    """The Based / JRT "contains" metric: does any gold answer occur in the output (case-insensitive)."""
    lowered = output.lower()
    return any(answer.strip().lower() in lowered for answer in answers if answer.strip())


def fraction_contained(output: str, references: list[str]) -> float:
    """RULER's NIAH score: the fraction of references that occur in the output."""
    return sum(ref in output for ref in references) / len(references) if references else 0.0


def first_line(text: str) -> str:
    return text.split("\n", 1)[0]


def digits_in(text: str) -> list[str]:
    return re.findall(r"\d+", text)


@torch.no_grad()
def greedy_generate(ctx: EvalContext, prompts: list[list[int]], max_new_tokens: int,
                    on_done: Callable[[int], None] | None = None) -> list[str]:
    """Greedy continuations (decoded text) of token-id prompts. Prompts of equal length are batched together
    (recurrent models have no padding mask); long prompts are prefilled in pieces with the state carried."""
    outputs: list[str | None] = [None] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for index, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(index)
    device = next(ctx.model.parameters()).device
    for indices in by_length.values():
        for start in range(0, len(indices), ctx.batch_size):
            group = indices[start:start + ctx.batch_size]
            ids = torch.tensor([prompts[i] for i in group], device=device)
            generated = ctx.model.generate(ids, max_new_tokens=max_new_tokens, prefill_chunk=ctx.prefill_chunk,
                                           stop_tokens=())  # always max_new_tokens: the scorers cut the text
            for row, index in enumerate(group):
                outputs[index] = ctx.tokenizer.decode(generated[row, ids.shape[1]:].tolist())
            if on_done:
                on_done(len(group))
    return outputs  # type: ignore[return-value]


@torch.no_grad()
def token_logprobs(model, ids: torch.Tensor, chunk: int = 2048, want: str = "loss", state=None):
    """One pass over ``ids`` [B, T] in pieces of ``chunk`` tokens with the recurrent state carried, starting
    from ``state`` (a ``RecurrentState``; None: the empty state).

    want="loss":   per-position next-token losses [B, T-1] (position t predicts token t+1), float32
    want="argmax": the argmax prediction at each position [B, T]
    Only these reductions leave each piece, so memory does not grow with T x vocab.
    """
    pieces, previous_logits = [], None
    for start in range(0, ids.shape[1], chunk):
        out = model(ids[:, start:start + chunk], state=state, use_cache=True)
        state, logits = out.state, out.logits.float()
        if want == "argmax":
            pieces.append(logits.argmax(-1))
            continue
        if previous_logits is not None:  # the last position of the previous piece predicts this piece's first
            pieces.append(torch.nn.functional.cross_entropy(previous_logits, ids[:, start], reduction="none")[:, None])
        inner = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, start + 1:start + chunk],
                                                  reduction="none")
        pieces.append(inner)
        previous_logits = logits[:, -1]
    return torch.cat(pieces, dim=1)


def stable_seed(*parts: Any) -> int:
    """A seed from the parts that is the same in every process (Python's hash() of str is salted)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") % 2**63
