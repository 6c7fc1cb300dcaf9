"""StateX on the layers that hold a base's recall: a variant's ``layers: "recall:K"`` expands the K layers whose
state the base's MQAR needs most, as the base's own ``mqar_layers`` evaluation measures it (the accuracy lost when
one layer's state is emptied after the pairs, averaged over that task's cells). The paper picks layers by position
(layer 0 and every P-th); a base may hold its pairs elsewhere.

The choice is made once, when the base's evaluation has finished, and kept in OUT/<family>/<variant>/layers.json:
every seed of the variant, a resumed run and a re-evaluated base all keep the same layers."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from statex.errors import StatexError
from statex.eval.tasks.mqar_layers import choose_layers, describe_choice, layer_costs
from statex.expand import plan_expansion, recall_count

if TYPE_CHECKING:
    from statex.compare.plan import Plan

CHOICE_FILE = "layers.json"
RULE = ("the K layers whose state, emptied alone after the pairs, costs the base's MQAR the most accuracy "
        "(mqar_layers, mean over its cells; ties to the lower layer)")

__all__ = ["CHOICE_FILE", "pending", "recall_count", "resolve"]


def pending(plan: Plan) -> list[tuple[str, Any]]:
    """(family, VariantSpec) of every ``recall:K`` variant: the bases they need evaluated first."""
    return [(name, v) for name, fam in plan.spec.families.items() for v in fam.variants
            if recall_count(v.layers) is not None]


def resolve(plan: Plan, say: Callable[[str], None]) -> None:
    """Every ``recall:K`` variant's training stages get their layers: those kept in its layers.json, else chosen
    from the base's evaluation records (and kept). The plan's expanded config and its description follow."""
    from statex.files import write_atomic

    for family, variant in pending(plan):
        fam, label, count = plan.families[family], variant.label, recall_count(variant.layers)
        kept = plan.out / family / label / CHOICE_FILE
        if kept.is_file():
            layers = _read_choice(kept, count, fam.config.n_layer)
        else:
            base_eval = next(s.directory for s in plan.stages if s.kind == "eval" and s.family == family
                             and s.variant == "base")
            try:
                records = json.loads((base_eval / "records.json").read_text())
            except (OSError, ValueError) as exc:
                raise StatexError(f"{family} {label}: layers recall:{count} need the base's evaluation "
                                  f"({base_eval / 'records.json'}: {exc})") from None
            costs = layer_costs(records)
            try:
                layers = choose_layers(costs, count)
            except StatexError as exc:
                raise StatexError(f"{family} {label}: layers recall:{count}: {exc}") from None
            kept.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(kept, json.dumps({"layers": layers, "rule": RULE, "costs": {str(k): round(v, 4) for k, v
                                                                                     in costs.items()}},
                                          indent=1) + "\n")
            say(f"{family} {label}: {describe_choice(costs, layers)}")
        chosen = ",".join(map(str, layers))
        for stage in plan.stages:
            if stage.kind == "train" and stage.family == family and stage.variant == label:
                stage.train = dataclasses.replace(stage.train, expand_layers=chosen)
        fam.variants[label] = plan_expansion(fam.config, chosen, variant.mode, heads=variant.heads,
                                             factor=variant.factor, dt_init=variant.dt_init)[1]
        fam.expansions[label] = {**fam.expansions[label], "expand_layers": f"{variant.layers} (layers {chosen})"}


def _read_choice(path: Path, count: int, n_layer: int) -> list[int]:
    try:
        layers = json.loads(path.read_text())["layers"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StatexError(f"{path}: unreadable layer choice ({exc})") from None
    if not (isinstance(layers, list) and len(set(layers)) == len(layers) == count
            and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n_layer for i in layers)):
        raise StatexError(f"{path}: holds {str(layers)[:80]}, not {count} distinct layers of the {n_layer}-layer base "
                          f"(recall:{count})")
    return sorted(layers)
