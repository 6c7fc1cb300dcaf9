"""Export to the formats other libraries load: transformers' ``Mamba2ForCausalLM`` and fla's ``GLAForCausalLM``.

Both describe every layer with one config (one d_state, one head layout), so only models whose layers are all
alike can be exported; a StateX model (some layers with more heads' state or a larger d_state) cannot, and is
refused with the layers that differ named. Its route is statex's own format, which ``statex.load_model`` reads.

    transformers: config.json (model_type mamba2) + model.safetensors, ``backbone.embeddings`` for the embedding
    fla:          config.json (model_type gla) + model.safetensors, statex's names (they are fla's)

Tokenizer files beside the source model are copied along. The directory is written beside the target under a
hidden name and renamed into place whole.
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import fields
from pathlib import Path
from typing import Any

from statex.config import ModelConfig
from statex.errors import StatexError

TARGETS = {"transformers": "mamba2", "fla": "gla"}  # target -> the family it takes
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")


def _check_uniform(config: ModelConfig, target: str) -> None:
    first = config.layers[0]
    differing = [i for i, spec in enumerate(config.layers) if spec != first]
    if differing:
        changed = sorted({f.name for f in fields(first)
                          if any(getattr(config.layers[i], f.name) != getattr(first, f.name) for i in differing)})
        raise StatexError(f"cannot export to {target}: layer(s) {', '.join(map(str, differing))} differ from layer 0 "
                          f"in {', '.join(changed)}, and the {target} config describes every layer alike; keep "
                          "statex's format (statex.load_model reads it)")


def export_config(config: ModelConfig, target: str) -> dict[str, Any]:
    """The target library's config.json for ``config`` (refused with one line where it cannot describe it)."""
    if target not in TARGETS:
        raise StatexError(f"--to must be one of {', '.join(TARGETS)}, got {target!r}")
    if config.family != TARGETS[target]:
        raise StatexError(f"cannot export a {config.family} model to {target}: {target} takes "
                          f"{TARGETS[target]} models (transformers: Mamba2, fla: GLA)")
    _check_uniform(config, target)
    spec = config.layers[0]
    ids = {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
           "pad_token_id": config.pad_token_id, "vocab_size": config.vocab_size,
           "tie_word_embeddings": config.tie_embeddings, "torch_dtype": "float32"}
    if not math.isclose(spec.norm_eps, config.norm_eps):
        raise StatexError(f"cannot export to {target}: the layers' norm eps ({spec.norm_eps}) differs from the "
                          f"model's ({config.norm_eps}), and {target} has one")
    if target == "transformers":
        expand = spec.nheads * spec.headdim / config.d_model
        if expand != int(expand):
            raise StatexError(f"cannot export to transformers: d_inner {spec.nheads * spec.headdim} is not a "
                              f"multiple of d_model {config.d_model} (Mamba2Config's expand is an integer)")
        return {"architectures": ["Mamba2ForCausalLM"], "model_type": "mamba2", "hidden_size": config.d_model,
                "num_hidden_layers": config.n_layer, "state_size": spec.d_state, "num_heads": spec.nheads,
                "head_dim": spec.headdim, "n_groups": spec.ngroups, "expand": int(expand),
                "conv_kernel": spec.d_conv, "use_conv_bias": spec.conv_bias, "use_bias": spec.bias,
                "layer_norm_epsilon": config.norm_eps, "residual_in_fp32": config.residual_in_fp32,
                "rms_norm": True, "norm_before_gate": False, "hidden_act": "silu", "chunk_size": spec.chunk_size,
                "time_step_limit": list(spec.dt_limit), **ids}
    return {"architectures": ["GLAForCausalLM"], "model_type": "gla", "attn_mode": "chunk",
            "hidden_size": config.d_model, "num_hidden_layers": config.n_layer, "num_heads": spec.num_heads,
            "num_kv_heads": None, "expand_k": spec.key_dim / config.d_model,
            "expand_v": spec.value_dim / config.d_model, "feature_map": None, "use_short_conv": spec.use_short_conv,
            "conv_size": spec.conv_size, "conv_bias": spec.conv_bias, "use_output_gate": True, "use_gk": True,
            "use_gv": False, "gate_low_rank_dim": spec.gate_low_rank_dim,
            "gate_logit_normalizer": spec.gate_logit_normalizer, "clamp_min": spec.clamp_min,
            "hidden_act": "swish", "intermediate_size": config.intermediate_size, "elementwise_affine": True,
            "norm_eps": config.norm_eps, "attn": None, "fuse_norm": True, "fuse_swiglu": True,
            "fuse_cross_entropy": True, "initializer_range": config.initializer_range, **ids}


def export_model(source: str | Path, out: str | Path, target: str) -> Path:
    """Write the model in ``source`` (any format statex loads) to ``out`` in ``target``'s format."""
    from safetensors.torch import save_file

    from statex.io.loading import load_config, load_model
    from statex.io.own import tensors_to_save
    from statex.files import clean_stale_temporaries, honour_umask, remove_path, replace_directory, temporary_directory

    source, out = Path(source), Path(out)
    config, _ = load_config(source)
    target_config = export_config(config, target)  # refusals before any weights are read
    model = load_model(source)
    renames = {"backbone.embedding.weight": "backbone.embeddings.weight"} if target == "transformers" else {}
    tensors = tensors_to_save(model, lambda name: renames.get(name, name))
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(out.parent)
    tmp = temporary_directory(out)
    try:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        honour_umask(tmp / "model.safetensors")
        # transformers writes time_step_limit's infinity as JSON's Infinity and reads it back: so do we
        (tmp / "config.json").write_text(json.dumps(target_config, indent=2) + "\n")
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, tmp / name)
        replace_directory(tmp, out)
    finally:
        remove_path(tmp)
    return out


__all__ = ["TARGETS", "export_config", "export_model"]
