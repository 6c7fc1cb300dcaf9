"""Which layers carry MQAR's key-value pairs to the queries: each sequence is read up to the end of its pairs,
then one layer's recurrent and convolution state is replaced by the empty state (``reset``), or every layer's but
one (``only``), and the rest of the sequence (the queries) is read from there. A layer whose reset costs much
accuracy holds pairs no other layer holds; a layer that recalls alone (``only``) holds them all. ``intact`` (no
reset) and ``all`` (every layer reset: no pair can reach a query, so about chance) frame the two.

This is the measurement behind choosing which layers to expand (the paper expands a fixed set: the first layer
and every k-th); it reuses MQAR's sequences (``statex.eval.tasks.mqar``), so its ``intact`` cells equal MQAR's own
at the same seed and sizes, but for argmax near-ties (the sequence is read in two pieces)."""
from __future__ import annotations

import torch

from statex.eval.common import EvalContext, Record, token_logprobs
from statex.eval.tasks import mqar

def ablated_states(state, empty) -> list[tuple[str, int | None, object]]:
    """(mode, layer, state) for every ablation of ``state`` (a ``RecurrentState`` after the pairs); ``empty``:
    the model's empty state of the same batch."""
    layers = range(len(state.layers))
    swap = type(state)
    out: list[tuple[str, int | None, object]] = [("intact", None, state)]
    out += [("reset", i, swap([empty.layers[j] if j == i else state.layers[j] for j in layers])) for i in layers]
    out += [("only", i, swap([state.layers[j] if j == i else empty.layers[j] for j in layers])) for i in layers]
    out.append(("all", None, empty))
    return out


def query_predictions(model, ids: torch.Tensor, boundary: int, chunk: int = 2048) -> dict[tuple, torch.Tensor]:
    """(mode, layer) -> argmax predictions [B, T - boundary] at the positions from ``boundary`` on, with the
    state after ``ids[:, :boundary]`` ablated as ``ablated_states`` says."""
    context = model(ids[:, :boundary], use_cache=True).state
    empty = model.empty_state(ids.shape[0])
    return {(mode, layer): token_logprobs(model, ids[:, boundary:], chunk, want="argmax",
                                          state=state.map(torch.clone))  # each pass from an untouched copy
            for mode, layer, state in ablated_states(context, empty)}


def run(ctx: EvalContext) -> list[Record]:
    lengths = ctx.options.mqar_lengths or ctx.options.lengths or mqar.DEFAULT_LENGTHS
    pairs_grid = ctx.options.pairs or mqar.DEFAULT_PAIRS
    model = ctx.model
    device = next(model.parameters()).device
    cells = [(length, pairs) for length in lengths for pairs in pairs_grid if 4 * pairs <= length]
    bar = ctx.bar(len(cells) * ctx.n, "mqar_layers")
    records = []
    for length, pairs in cells:
        examples = mqar.generate_examples(ctx.tokenizer, length, pairs, ctx.n, ctx.seed, ctx.options.mqar_keys)
        boundary = 2 * pairs  # the pairs end here; every query and labelled value comes after
        tallies: dict[tuple[str, int | None], list[int]] = {}
        for start in range(0, len(examples), ctx.batch_size):
            batch = examples[start:start + ctx.batch_size]
            ids = torch.stack([e[0] for e in batch]).to(device)
            labels = torch.stack([e[1] for e in batch]).to(device)
            if bool((labels[:, :boundary + 1] != -100).any()):
                raise RuntimeError("an MQAR label before the queries: the sequence layout changed")
            for key, predictions in query_predictions(model, ids, boundary, ctx.prefill_chunk).items():
                c, t = mqar.score(predictions, labels[:, boundary:])
                tally = tallies.setdefault(key, [0, 0])
                tally[0], tally[1] = tally[0] + c, tally[1] + t
            bar.update(len(batch))
        for (mode, layer), (correct, total) in tallies.items():
            where = f" layer={layer}" if layer is not None else ""
            records.append(Record(ctx.model_name, "mqar_layers", f"length={length} pairs={pairs} mode={mode}{where}",
                                  "accuracy", correct / total, len(examples),
                                  {"length": length, "pairs": pairs, "mode": mode, "layer": layer}))
    bar.close()
    return records
