"""The optimizer's state in checkpoints, in one form whatever the number of processes and their wrapping.

``torch.optim.Optimizer.state_dict()`` keys each parameter's state by its position in the optimizer
(0, 1, 2, ...); the full state dict of FSDP2 (``torch.distributed.checkpoint.state_dict``) keys it by the
parameter's name. A checkpoint written by one process or by DDP therefore could not be loaded under FSDP, and
one written under FSDP loaded elsewhere only because the positions happened to follow the names' order.
Checkpoints now always hold the named form; loading converts to what the run's optimizer takes. Both forms
list the parameters of every group in the same order (``build_param_groups``), which is what the conversion
relies on and checks.
"""
from __future__ import annotations

from typing import Any

import torch


def for_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer, sharded: bool) -> dict[str, Any]:
    """The optimizer's state, name-keyed and whole (gathered from every process when ``sharded``: FSDP2)."""
    if not sharded:
        return to_named(optimizer.state_dict(), parameter_names(model, optimizer))
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], sharded: bool) -> None:
    """Load a checkpoint's optimizer state (either form) into ``optimizer`` (FSDP2-sharded when ``sharded``)."""
    names = parameter_names(model, optimizer)
    if not sharded:
        optimizer.load_state_dict(to_positions(state, names) if is_named(state) else state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state if is_named(state) else to_named(state, names),
                             options=StateDictOptions(full_state_dict=True))


def parameter_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    """The names of the optimizer's parameters, group by group, in the optimizer's order."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]


def is_named(state: dict[str, Any]) -> bool:
    params = [p for group in state["param_groups"] for p in group["params"]]
    return bool(params) and isinstance(params[0], str)


def to_named(state: dict[str, Any], names: list[list[str]]) -> dict[str, Any]:
    """Position-keyed (``Optimizer.state_dict()``) to name-keyed."""
    flat = [n for group in names for n in group]
    groups = [{**group, "params": [flat[i] for i in group["params"]]} for group in state["param_groups"]]
    _check_groups(groups, names)
    return {"state": {flat[i]: value for i, value in state["state"].items()}, "param_groups": groups}


def to_positions(state: dict[str, Any], names: list[list[str]]) -> dict[str, Any]:
    """Name-keyed to position-keyed (what ``Optimizer.load_state_dict`` takes)."""
    _check_groups(state["param_groups"], names)
    index = {n: i for i, n in enumerate(n for group in names for n in group)}
    groups = [{**group, "params": [index[n] for n in group["params"]]} for group in state["param_groups"]]
    return {"state": {index[n]: value for n, value in state["state"].items()}, "param_groups": groups}


def _check_groups(groups: list[dict[str, Any]], names: list[list[str]]) -> None:
    if [list(g["params"]) for g in groups] != names:
        from statex.errors import CheckpointError

        raise CheckpointError("the checkpoint's optimizer state does not hold this model's parameters in its "
                              "groups (a different model or optimizer grouping)")


def build_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on parameters with two or more dimensions, none on the rest."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
