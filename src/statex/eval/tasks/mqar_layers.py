"""Which layers carry MQAR's key-value pairs to the queries: each sequence is read up to the end of its pairs,
then one layer's recurrent and convolution state is replaced by the empty state (``reset``), or every layer's but
one (``only``), and the rest of the sequence (the queries) is read from there. A layer whose reset costs much
accuracy holds pairs no other layer holds; a layer that recalls alone (``only``) holds them all. ``intact`` (no
reset) and ``all`` (every layer reset: no pair can reach a query, so about chance) frame the two.

This is the measurement behind choosing which layers to expand (the paper expands a fixed set: the first layer
and every k-th); it reuses MQAR's sequences (``statex.eval.tasks.mqar``), so its ``intact`` cells equal MQAR's own
at the same seed and sizes, but for argmax near-ties (the sequence is read in two pieces)."""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import torch

from statex.errors import StatexError

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


def layer_costs(records: list[Record] | list[dict[str, Any]]) -> dict[int, float]:
    """Per layer, the MQAR accuracy lost when its state alone is emptied after the pairs (kept whole minus emptied),
    averaged over the mqar_layers cells (length x pairs) of one model's records (``Record`` objects, or their
    dicts as results.json holds them)."""
    rows = [r for r in (r.to_dict() if isinstance(r, Record) else r for r in records)
            if r.get("task") == "mqar_layers"]
    whole = {(r["params"]["length"], r["params"]["pairs"]): r["value"] for r in rows
             if r["params"]["mode"] == "intact"}
    lost: dict[int, list[float]] = {}
    for r in rows:
        p = r["params"]
        if p["mode"] == "reset" and (p["length"], p["pairs"]) in whole:
            lost.setdefault(p["layer"], []).append(whole[p["length"], p["pairs"]] - r["value"])
    return {layer: statistics.fmean(values) for layer, values in sorted(lost.items())}


def choose_layers(costs: dict[int, float], count: int) -> list[int]:
    """The ``count`` layers of highest cost (ties, to 1e-9, to the lower index), in layer order."""
    if len(costs) < count:
        raise StatexError(f"{count} layers asked for, but mqar_layers measured {len(costs)}")
    ranked = sorted(costs, key=lambda layer: (-round(costs[layer], 9), layer))
    return sorted(ranked[:count])


WEAK_COST = 0.01  # below this accuracy lost, a layer's state holds nothing measurable of the pairs


def describe_choice(costs: dict[int, float], layers: list[int]) -> str:
    """One line on chosen layers: what emptying each costs, against the rest; or that no layer's cost says much."""
    named = f"layer{'s' if len(layers) > 1 else ''} {', '.join(map(str, layers))}"
    if max(costs[i] for i in layers) < WEAK_COST:
        return (f"{named}, though no layer holds the recall measurably (emptying any one costs MQAR less than "
                f"{WEAK_COST}): the choice says little")
    rest = max((c for i, c in costs.items() if i not in layers), default=0.0)
    return (f"{named}, where the recall is held (emptying each costs MQAR {', '.join(f'{costs[i]:.3f}' for i in layers)}"
            f"; any other layer at most {rest:.3f})")


def costs_from_results(path: str | Path, model: str | None = None) -> dict[int, float]:
    """``layer_costs`` of one model's records in a ``statex eval`` results.json (``model``: its name there; needed
    only when the file holds several models' mqar_layers)."""
    import json

    try:
        records = json.loads(Path(path).read_text())
        rows = [r for r in records if r.get("task") == "mqar_layers"]
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise StatexError(f"{path}: not a readable statex eval results.json ({exc})") from None
    models = sorted({str(r.get("model")) for r in rows})
    if not models:
        raise StatexError(f"{path}: no mqar_layers records (statex eval MODEL --tasks mqar_layers makes them)")
    if model is None and len(models) > 1:
        raise StatexError(f"{path}: mqar_layers of {len(models)} models ({', '.join(models)}): name one")
    chosen = model if model is not None else models[0]
    if chosen not in models:
        raise StatexError(f"{path}: no mqar_layers records of model {chosen!r} (it has {', '.join(models)})")
    try:
        return layer_costs([r for r in rows if str(r.get("model")) == chosen])
    except (KeyError, TypeError) as exc:
        raise StatexError(f"{path}: a malformed mqar_layers record ({exc!r})") from None
