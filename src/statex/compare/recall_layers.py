"""StateX on the layers that hold a base's recall: a variant's ``layers: "recall:K"`` expands the K layers whose
state the base's MQAR needs most, as the base's own ``mqar_layers`` evaluation measures it (the accuracy lost when
one layer's state is emptied after the pairs, averaged over that task's cells). The paper picks layers by position
(layer 0 and every P-th); a base may hold its pairs elsewhere.

The choice is made once, when the base's evaluation has finished, and kept in OUT/<family>/<variant>/layers.json:
every seed of the variant, a resumed run and a re-evaluated base all keep the same layers."""
from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from statex.errors import StatexError

if TYPE_CHECKING:
    from statex.compare.plan import Plan

PREFIX = "recall:"
CHOICE_FILE = "layers.json"
WEAK_COST = 0.01  # below this accuracy lost, a layer's state holds nothing measurable of the pairs
RULE = ("the K layers whose state, emptied alone after the pairs, costs the base's MQAR the most accuracy "
        "(mqar_layers, mean over its cells; ties to the lower layer)")


def recall_count(layers: Any) -> int | None:
    """K of a ``"recall:K"`` layer choice; None for any other layer spec."""
    if not (isinstance(layers, str) and layers.strip().lower().startswith(PREFIX)):
        return None
    text = layers.strip()[len(PREFIX):].strip()
    if not text.isdigit() or int(text) < 1:
        raise StatexError(f"layers {layers!r}: K of recall:K must be an integer >= 1")
    return int(text)


def layer_costs(records: list[dict[str, Any]]) -> dict[int, float]:
    """Per layer, the MQAR accuracy lost when its state alone is emptied after the pairs (kept whole minus emptied),
    averaged over the mqar_layers cells (length x pairs) of one model's records."""
    rows = [r for r in records if r.get("task") == "mqar_layers"]
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
        raise StatexError(f"layers recall:{count}: the base's mqar_layers measured {len(costs)} layers")
    ranked = sorted(costs, key=lambda layer: (-round(costs[layer], 9), layer))
    return sorted(ranked[:count])


def pending(plan: Plan) -> list[tuple[str, str]]:
    """(family, variant) of every ``recall:K`` variant: the bases they need evaluated first."""
    return [(name, v.label) for name, fam in plan.spec.families.items() for v in fam.variants
            if recall_count(v.layers) is not None]


def resolve(plan: Plan, say: Callable[[str], None]) -> None:
    """Every ``recall:K`` variant's training stages get their layers: those kept in its layers.json, else chosen
    from the base's evaluation records (and kept). The plan's expanded config and its description follow."""
    from statex.expand import plan_expansion
    from statex.files import write_atomic

    for family, label in pending(plan):
        fam = plan.families[family]
        variant = next(v for v in plan.spec.families[family].variants if v.label == label)
        count = recall_count(variant.layers)
        kept = plan.out / family / label / CHOICE_FILE
        if kept.is_file():
            layers = _read_choice(kept, count)
        else:
            base_eval = next(s.directory for s in plan.stages if s.kind == "eval" and s.family == family
                             and s.variant == "base")
            try:
                records = json.loads((base_eval / "records.json").read_text())
            except (OSError, ValueError) as exc:
                raise StatexError(f"{family} {label}: layers recall:{count} need the base's evaluation "
                                  f"({base_eval / 'records.json'}: {exc})") from None
            costs = layer_costs(records)
            layers = choose_layers(costs, count)
            kept.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(kept, json.dumps({"layers": layers, "rule": RULE, "costs": {str(k): round(v, 4) for k, v
                                                                                     in costs.items()}},
                                          indent=1) + "\n")
            others = max((c for layer, c in costs.items() if layer not in layers), default=0.0)
            named = f"layer{'s' if count > 1 else ''} {', '.join(map(str, layers))}"
            if max(costs[i] for i in layers) < WEAK_COST:
                say(f"{family} {label}: {named}, though no layer's state holds the base's MQAR (emptying any one "
                    f"costs it less than {WEAK_COST}): the choice says little")
            else:
                say(f"{family} {label}: {named}, where the base holds its MQAR (emptying each costs "
                    f"{', '.join(f'{costs[i]:.3f}' for i in layers)}; any other layer at most {others:.3f})")
        chosen = ",".join(map(str, layers))
        for stage in plan.stages:
            if stage.kind == "train" and stage.family == family and stage.variant == label:
                stage.train = dataclasses.replace(stage.train, expand_layers=chosen)
        fam.variants[label] = plan_expansion(fam.config, chosen, variant.mode, heads=variant.heads,
                                             factor=variant.factor, dt_init=variant.dt_init)[1]
        fam.expansions[label] = {**fam.expansions[label], "expand_layers": f"{variant.layers} (layers {chosen})"}


def _read_choice(path: Path, count: int) -> list[int]:
    try:
        layers = json.loads(path.read_text())["layers"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StatexError(f"{path}: unreadable layer choice ({exc})") from None
    if not (isinstance(layers, list) and len(layers) == count and all(isinstance(i, int) for i in layers)):
        raise StatexError(f"{path}: holds {layers!r}, not the {count} layers of recall:{count}")
    return layers
