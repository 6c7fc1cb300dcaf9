"""The StateX surgery: enlarge the recurrent state of selected layers of a pretrained model.

GLA  (``heads``): a selected layer's H heads become ``heads`` larger heads with the same total key and value
      dims; the state grows from dk*dv/H to dk*dv/heads with no new projection parameters (only the output
      norm weight grows from dv/H to dv/heads entries).
Mamba2 (``factor``): a selected layer's d_state N becomes R*N; the B and C blocks of in_proj and their conv
      channels grow, everything else keeps its shape.

Modes (docs/expansion.md has the full kept / new / reset tables):
  GLA     reinit   (paper default) fresh mixer: Linear xavier_uniform(gain 2^-2.5), zero bias, norm 1; attn_norm 1
          inherit  keep every projection, tile the output norm weight; attn_norm reset to 1 unless kept
  Mamba2  reinit   (paper default) keep z, x, dt rows, x conv channels, D, out_proj, block norm; B and C new
                   (PyTorch default init); A_log = log(1..H), dt_bias = 1, gated-norm weight = 1
          copy     old B, C tiled R times (reference ablation: the copies get identical gradients forever)
          zero     old B, C then zeros (reference ablation: the new dims get exactly zero gradient forever)
          preserve old B, C in the first N dims of each group; new B dims random, new C dims zero, so the
                   expanded model computes exactly the original function, yet the new dims learn
"""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Sequence

import torch
import torch.nn as nn

from statex.config import GLASpec, Mamba2Spec, ModelConfig
from statex.errors import StatexError

GLA_MODES = ("reinit", "inherit")
MAMBA2_MODES = ("reinit", "copy", "zero", "preserve")
DEFAULT_MODE = "reinit"
GLA_REINIT_GAIN = 2**-2.5


# ---- which layers ------------------------------------------------------------------------------------------------

RECALL_PREFIX = "recall:"


def recall_count(layers: Any) -> int | None:
    """K of a ``"recall:K"`` layer choice (the K layers that hold a model's recall, chosen from its mqar_layers
    evaluation by ``statex expand --recall-from`` or a comparison); None for any other layer spec."""
    if not (isinstance(layers, str) and layers.strip().lower().startswith(RECALL_PREFIX)):
        return None
    text = layers.strip()[len(RECALL_PREFIX):].strip()
    if not text.isdigit() or int(text) < 1:
        raise StatexError(f"layers {layers!r}: K of recall:K must be an integer >= 1")
    return int(text)


def select_layers(spec: str | int | Sequence[int], n_layer: int) -> list[int]:
    """Resolve a layer selection to sorted unique indices.

    ``"every:P"``  layer 0 and every P-th after it: range(0, L, P) (the reference code's rule)
    ``"0,6,12"``   an explicit list (also a Python list or a single int); negative indices count from the end
    ``"frac:F"``   k = max(1, round(F * L)) layers, evenly spaced from layer 0: floor(i * L / k), i = 0..k-1
    ``"all"``      every layer
    """
    if isinstance(spec, int) and not isinstance(spec, bool):
        indices = [spec]
    elif isinstance(spec, (list, tuple)):
        indices = list(spec)
    elif isinstance(spec, str):
        text = spec.strip().lower()
        if text == "all":
            indices = list(range(n_layer))
        elif text.startswith("every:"):
            period = _parse_number(text[6:], int, spec)
            if period < 1:
                raise StatexError(f"layer spec {spec!r}: the period P of every:P must be >= 1")
            indices = list(range(0, n_layer, period))
        elif text.startswith(RECALL_PREFIX):
            raise StatexError(f"layer spec {spec!r}: recall:K chooses layers from a model's mqar_layers evaluation; "
                              "statex expand (with --recall-from) and statex compare take it")
        elif text.startswith("frac:"):
            fraction = _parse_number(text[5:], float, spec)
            if not 0 < fraction <= 1:
                raise StatexError(f"layer spec {spec!r}: the fraction F of frac:F must be in (0, 1]")
            count = max(1, round(fraction * n_layer))
            indices = [i * n_layer // count for i in range(count)]
        else:
            indices = [_parse_number(part, int, spec) for part in text.split(",") if part.strip()]
    else:
        raise StatexError(f"layer spec must be a string or a list of ints, got {type(spec).__name__}")
    resolved = []
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, int):
            raise StatexError(f"layer spec {spec!r}: {index!r} is not a layer index")
        if not -n_layer <= index < n_layer:
            raise StatexError(f"layer spec {spec!r}: layer {index} is out of range for a {n_layer}-layer model")
        resolved.append(index % n_layer)
    if not resolved:
        raise StatexError(f"layer spec {spec!r} selects no layer")
    return sorted(set(resolved))


def _parse_number(text: str, kind: type, spec: object):
    try:
        return kind(text.strip())
    except ValueError:
        raise StatexError(f"layer spec {spec!r}: cannot read {text.strip()!r} as {kind.__name__}") from None


# ---- the new shapes ----------------------------------------------------------------------------------------------

def expand_config(config: ModelConfig, layers: Sequence[int], heads: int = 1, factor: int = 4) -> ModelConfig:
    """The config of the expanded model (no weights involved): used by ``expand`` and by the inspect preview."""
    new = copy.deepcopy(config)
    for index in layers:
        spec = new.layers[index]
        if isinstance(spec, GLASpec):
            if not isinstance(heads, int) or heads < 1:
                raise StatexError(f"--heads must be a positive integer, got {heads!r}")
            if spec.num_heads % heads:
                raise StatexError(
                    f"layer {index}: heads={heads} must divide the layer's {spec.num_heads} heads"
                )
            if heads == spec.num_heads:
                raise StatexError(f"layer {index}: heads={heads} leaves the layer unchanged (it has {heads} heads)")
            new.layers[index] = dataclasses.replace(spec, num_heads=heads)
        else:
            if not isinstance(factor, int) or factor < 2:
                raise StatexError(f"--factor must be an integer >= 2, got {factor!r}")
            new.layers[index] = dataclasses.replace(spec, d_state=spec.d_state * factor)
    return new.validate()


def plan_expansion(config: ModelConfig, layers: str | int | Sequence[int], mode: str = DEFAULT_MODE,
                   heads: int = 1, factor: int = 4, dt_init: str = "reset") -> tuple[list[int], ModelConfig]:
    """(layer indices, expanded config) of an expansion request, from the config alone: every error of the
    request (layer spec, mode, heads, factor, dt_init) is raised here, before any weights are touched."""
    valid = GLA_MODES if config.family == "gla" else MAMBA2_MODES
    if mode not in valid:
        raise StatexError(f"mode {mode!r} is not a {config.family} expansion mode (choose from {', '.join(valid)})")
    if dt_init not in ("reset", "inverse-softplus"):
        raise StatexError(f"dt_init must be 'reset' or 'inverse-softplus', got {dt_init!r}")
    indices = select_layers(layers, config.n_layer)
    return indices, expand_config(config, indices, heads=heads, factor=factor)


# ---- the surgery -------------------------------------------------------------------------------------------------

def expand(
    model,
    layers: str | int | Sequence[int],
    mode: str = DEFAULT_MODE,
    heads: int = 1,
    factor: int = 4,
    seed: int = 0,
    keep_attn_norm: bool = False,
    keep_ssm_params: bool = False,
    dt_init: str = "reset",
):
    """Return a StateX copy of ``model``; ``model`` itself is not modified.

    layers: see ``select_layers``.  mode: GLA ``reinit`` | ``inherit``; Mamba2 ``reinit`` | ``copy`` | ``zero`` |
    ``preserve``.  heads: GLA heads per selected layer after merging.  factor: Mamba2 d_state multiplier.
    seed: every random draw comes from a generator seeded with it (same seed, same bits).
    keep_attn_norm: GLA, keep the block's attn_norm instead of resetting it to 1.
    keep_ssm_params: Mamba2, keep A_log, dt_bias and the gated-norm weight instead of the reference reset
    (``preserve`` always keeps them).  dt_init: Mamba2, ``reset`` (dt_bias = 1, the reference) or
    ``inverse-softplus`` (dt log-uniform in [1e-3, 0.1], stored through the inverse softplus) for the
    modes that reset dt_bias.
    """
    config: ModelConfig = model.config
    family = config.family
    indices, new_config = plan_expansion(config, layers, mode, heads=heads, factor=factor, dt_init=dt_init)
    new_config.history = list(config.history) + [{
        "op": "statex-expand", "family": family, "layers": indices, "mode": mode,
        **({"heads": heads} if family == "gla" else {"factor": factor}), "seed": seed,
        **({"keep_attn_norm": keep_attn_norm} if family == "gla" else
           {"keep_ssm_params": keep_ssm_params or mode == "preserve", "dt_init": dt_init}),
    }]

    from statex.models import build_model
    from statex.models.lm import require_model_memory

    require_model_memory(new_config, next(model.parameters()).dtype, next(model.parameters()).device, copies=2)
    new_model = build_model(new_config, device="meta")
    generator = torch.Generator().manual_seed(seed)
    source = model.state_dict()
    target = {}
    for name, param in new_model.state_dict().items():
        target[name] = source[name].detach().clone() if name in source and source[name].shape == param.shape \
            else None
    for index in indices:
        prefix = f"model.layers.{index}" if family == "gla" else f"backbone.layers.{index}"
        old_spec, new_spec = config.layers[index], new_config.layers[index]
        params = {n: t.detach() for n, t in source.items() if n.startswith(prefix + ".")}
        if family == "gla":
            updated = _expand_gla_layer(params, prefix, old_spec, new_spec, config.d_model, mode, keep_attn_norm,
                                        generator)
        else:
            updated = _expand_mamba2_layer(params, prefix, old_spec, new_spec, config.d_model, mode,
                                           keep_ssm_params or mode == "preserve", dt_init, generator)
        target.update(updated)
    missing = [name for name, tensor in target.items() if tensor is None]
    if missing:  # a bug, not a user error: every tensor must be either kept or produced above
        raise RuntimeError(f"expansion left {missing[0]!r} unset")
    device = next(iter(source.values())).device
    new_model.load_state_dict({n: t.to(device) for n, t in target.items()}, strict=False, assign=True)
    new_model.tie_weights()
    new_model.train(model.training)
    return new_model


def _fresh(shape, dtype, generator, init: str, **kw) -> torch.Tensor:
    tensor = torch.empty(shape, dtype=torch.float32)
    if init == "xavier":
        nn.init.xavier_uniform_(tensor, gain=kw["gain"], generator=generator)
    elif init == "linear":  # nn.Linear's default weight init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        bound = 1 / math.sqrt(kw["fan_in"])
        nn.init.uniform_(tensor, -bound, bound, generator=generator)
    else:
        raise ValueError(init)
    return tensor.to(dtype)


def _expand_gla_layer(params, prefix, old: GLASpec, new: GLASpec, d_model, mode, keep_attn_norm, generator):
    attn = f"{prefix}.attn."
    out = {}
    if mode == "reinit":
        for name, tensor in params.items():
            if not name.startswith(attn):
                continue
            local = name[len(attn):]
            if local.endswith("conv1d.weight"):
                # a freshly built module's conv keeps nn.Conv1d's default init: U(+-1/sqrt(width))
                out[name] = _fresh(tensor.shape, tensor.dtype, generator, "linear", fan_in=old.conv_size)
            elif local.endswith("conv1d.bias") or local.endswith(".bias"):
                out[name] = torch.zeros_like(tensor)
            elif local == "g_norm_swish_gate.weight":
                out[name] = torch.ones(new.head_v_dim, dtype=tensor.dtype)
            else:  # every Linear weight
                out[name] = _fresh(tensor.shape, tensor.dtype, generator, "xavier", gain=GLA_REINIT_GAIN)
    else:  # inherit: the projections are unchanged; the per-head norm weight is tiled over merged heads
        weight = params[attn + "g_norm_swish_gate.weight"]
        out[attn + "g_norm_swish_gate.weight"] = weight.repeat(new.head_v_dim // old.head_v_dim).clone()
    if not keep_attn_norm:
        norm = params[f"{prefix}.attn_norm.weight"]
        out[f"{prefix}.attn_norm.weight"] = torch.ones_like(norm)
    return out


# How the B and C blocks grow, per mode: for each (block, tensor), what fills the new dims.
#   tile:    the old block repeated R times (copy)          zero:  old block, then zeros
#   fresh:   old block, then PyTorch's default init          replace: the whole block freshly initialised
_MAMBA2_FILL = {
    "reinit": dict.fromkeys(("B", "C"), "replace"),
    "copy": dict.fromkeys(("B", "C"), "tile"),
    "zero": dict.fromkeys(("B", "C"), "zero"),
    # preserve: new C dims are silu(0) = 0 (zero in_proj rows and conv bias) so the output is unchanged; C's
    # new conv weights are random so that its in_proj rows get gradient from the first step.
    "preserve": {"B": "fresh", ("C", "in_proj.weight"): "zero", ("C", "in_proj.bias"): "zero",
                 ("C", "conv1d.weight"): "fresh", ("C", "conv1d.bias"): "zero"},
}


def _mamba2_fill(mode: str, block: str, tensor: str) -> str:
    table = _MAMBA2_FILL[mode]
    return table.get((block, tensor), table.get(block))


def _grow_block(old_rows, fill, fan_in, groups, n_old, n_new, generator):
    """old_rows [G*N, ...] (one block's rows or channels) -> [G*R*N, ...]; new dims follow ``fill``."""
    tail = old_rows.shape[1:]
    if fill == "replace":
        return _fresh((groups * n_new, *tail), old_rows.dtype, generator, "linear", fan_in=fan_in)
    per_group = old_rows.reshape(groups, n_old, *tail)
    if fill == "tile":
        grown = per_group.repeat(1, n_new // n_old, *([1] * len(tail)))
    else:
        extra_shape = (groups, n_new - n_old, *tail)
        extra = torch.zeros(extra_shape, dtype=old_rows.dtype) if fill == "zero" else _fresh(
            extra_shape, old_rows.dtype, generator, "linear", fan_in=fan_in)
        grown = torch.cat([per_group, extra], dim=1)
    return grown.reshape(groups * n_new, *tail)


def _expand_mamba2_layer(params, prefix, old: Mamba2Spec, new: Mamba2Spec, d_model, mode, keep_ssm, dt_init,
                         generator):
    mixer = f"{prefix}.mixer."
    d_inner, groups, n_old, n_new = old.d_inner, old.ngroups, old.d_state, new.d_state
    gn_old = groups * n_old
    out = {}
    # in_proj rows: [z (I) | x (I) | B (G*N) | C (G*N) | dt (H)]; conv1d channels: [x (I) | B (G*N) | C (G*N)]
    layouts = {
        "in_proj": ([2 * d_inner, gn_old, gn_old, old.nheads], d_model),
        "conv1d": ([d_inner, gn_old, gn_old], old.d_conv),
    }
    for module, (sizes, fan_in) in layouts.items():
        for suffix in ("weight", "bias"):
            name = f"{mixer}{module}.{suffix}"
            if name not in params:
                continue
            head, b_rows, c_rows, *rest = params[name].split(sizes, dim=0)
            tensor = f"{module}.{suffix}"
            b_new = _grow_block(b_rows, _mamba2_fill(mode, "B", tensor), fan_in, groups, n_old, n_new, generator)
            c_new = _grow_block(c_rows, _mamba2_fill(mode, "C", tensor), fan_in, groups, n_old, n_new, generator)
            out[name] = torch.cat([head, b_new, c_new, *rest], dim=0)

    if not keep_ssm:
        heads = old.nheads
        a_log = params[mixer + "A_log"]
        out[mixer + "A_log"] = torch.log(torch.arange(1, heads + 1, dtype=a_log.dtype))
        dt_bias = params[mixer + "dt_bias"]
        if dt_init == "reset":
            out[mixer + "dt_bias"] = torch.ones_like(dt_bias)
        else:
            dt = torch.exp(torch.rand(heads, generator=generator) * (math.log(0.1) - math.log(1e-3))
                           + math.log(1e-3)).clamp(min=1e-4)
            out[mixer + "dt_bias"] = (dt + torch.log(-torch.expm1(-dt))).to(dt_bias.dtype)
        out[mixer + "norm.weight"] = torch.ones_like(params[mixer + "norm.weight"])
    return out

