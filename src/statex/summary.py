"""Per-layer report of a model: mixer shapes, recurrent state elements and parameter counts."""
from __future__ import annotations

import json
from typing import Any

from statex.config import GLASpec, ModelConfig


def describe_model(model) -> dict[str, Any]:
    """A JSON-ready description. ``state_elements`` counts the recurrent matrix state per sequence
    (GLA's S, Mamba2's SSM state); the convolution state is reported separately."""
    config: ModelConfig = model.config
    layers = []
    for index, (spec, block) in enumerate(zip(config.layers, model.blocks)):
        entry: dict[str, Any] = {"index": index, "kind": spec.kind}
        if isinstance(spec, GLASpec):
            entry.update(num_heads=spec.num_heads, key_dim=spec.key_dim, value_dim=spec.value_dim,
                         head_k_dim=spec.head_k_dim, head_v_dim=spec.head_v_dim,
                         use_short_conv=spec.use_short_conv)
        else:
            entry.update(d_state=spec.d_state, nheads=spec.nheads, headdim=spec.headdim, ngroups=spec.ngroups,
                         d_inner=spec.d_inner, d_conv=spec.d_conv)
        entry.update(state_elements=spec.state_elements, conv_state_elements=spec.conv_state_elements,
                     params=sum(p.numel() for p in block.parameters()))
        layers.append(entry)
    return {
        "family": config.family,
        "vocab_size": config.vocab_size,
        "d_model": config.d_model,
        "n_layer": config.n_layer,
        "tie_embeddings": config.tie_embeddings,
        "layers": layers,
        "total_state_elements": sum(layer["state_elements"] for layer in layers),
        "total_conv_state_elements": sum(layer["conv_state_elements"] for layer in layers),
        "total_params": model.num_parameters(),
        "history": list(config.history),
    }


def describe_config(config: ModelConfig) -> dict[str, Any]:
    """``describe_model`` of a model built on the meta device (no memory, no weights)."""
    from statex.models import build_model

    return describe_model(build_model(config, device="meta"))


def format_description(info: dict[str, Any]) -> str:
    """A plain-text table of ``describe_model``'s output."""
    gla = info["family"] == "gla"
    shape_cols = ("heads", "dk/head", "dv/head") if gla else ("d_state", "nheads", "headdim")
    header = ("layer", "kind", *shape_cols, "state", "conv state", "params")
    rows = []
    for layer in info["layers"]:
        shape = ((layer["num_heads"], layer["head_k_dim"], layer["head_v_dim"]) if gla
                 else (layer["d_state"], layer["nheads"], layer["headdim"]))
        rows.append((layer["index"], layer["kind"], *shape, f"{layer['state_elements']:,}",
                     f"{layer['conv_state_elements']:,}", f"{layer['params']:,}"))
    rows.append(("total", "", "", "", "", f"{info['total_state_elements']:,}",
                 f"{info['total_conv_state_elements']:,}", f"{info['total_params']:,}"))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(v).rjust(w) for v, w in zip(row, widths)) for row in [header, *rows]]
    title = (f"{info['family']} model: d_model {info['d_model']}, {info['n_layer']} layers, "
             f"vocab {info['vocab_size']}, tied embeddings: {info['tie_embeddings']}")
    notes = [f"history: {json.dumps(entry)}" for entry in info.get("history", [])]
    return "\n".join([title, *lines, *notes])


def describe_expansion(before: dict[str, Any], after: dict[str, Any], layers: list[int]) -> dict[str, Any]:
    """``after`` (same schema as ``describe_model``) plus the ``before`` description and the differences."""
    return {
        **after,
        "expanded_layers": list(layers),
        "added_params": after["total_params"] - before["total_params"],
        "added_state_elements": after["total_state_elements"] - before["total_state_elements"],
        "state_ratio": after["total_state_elements"] / before["total_state_elements"],
        "before": before,
    }


def format_expansion(preview: dict[str, Any]) -> str:
    """Text table of the layers an expansion changes, before -> after, with totals."""
    before = preview["before"]
    gla = preview["family"] == "gla"
    shape_key = "num_heads" if gla else "d_state"
    header = ("layer", "heads" if gla else "d_state", "state", "params")
    rows = []
    for index in preview["expanded_layers"]:
        old, new = before["layers"][index], preview["layers"][index]
        rows.append((index, f"{old[shape_key]} -> {new[shape_key]}",
                     f"{old['state_elements']:,} -> {new['state_elements']:,}",
                     f"{old['params']:,} -> {new['params']:,}"))
    rows.append(("total", "", f"{before['total_state_elements']:,} -> {preview['total_state_elements']:,}",
                 f"{before['total_params']:,} -> {preview['total_params']:,}"))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(v).rjust(w) for v, w in zip(row, widths)) for row in [header, *rows]]
    lines.append(f"state x{preview['state_ratio']:.3f} ({preview['added_state_elements']:+,} elements), "
                 f"{preview['added_params']:+,} parameters")
    return "\n".join(lines)
