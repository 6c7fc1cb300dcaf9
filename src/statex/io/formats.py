"""Translating foreign config.json files into a ``ModelConfig``, and their weight names into ours.

Supported sources:
- ``statex``:    the project's own format (``config.json`` with ``"format": "statex"``)
- ``fla-gla``:   fla-hub GLA (``model_type: gla``), fla's names == ours
- ``mamba_ssm``: official state-spaces Mamba2 (``d_model``, ``n_layer``, ``ssm_cfg``), mamba_ssm's names == ours
- ``hf-mamba2``: HF transformers Mamba2 (``model_type: mamba2``), ``backbone.embeddings`` -> ``backbone.embedding``
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

from statex.config import GLASpec, Mamba2Spec, ModelConfig, check_layer_count, time_step_limit
from statex.errors import ConfigError
from statex.validation import describe_type, value_matches

_REQUIRED = object()


def _get(cfg: dict[str, Any], name: str, kind: Any, where: str, default: Any = _REQUIRED) -> Any:
    """A field of a foreign config, type-checked before any arithmetic is done with it; a missing (or null)
    field takes ``default``."""
    value = cfg.get(name)
    if value is None:
        if default is _REQUIRED:
            raise ConfigError(f"{where} config is missing the field {name!r}")
        return default
    if not value_matches(value, kind):
        raise ConfigError(f"{where}: config field {name} must be {describe_type(kind)}, got {value!r:.60}")
    return value


def detect_format(config: dict[str, Any]) -> str:
    if config.get("format") == "statex":
        return "statex"
    model_type = config.get("model_type")
    if model_type == "gla":
        return "fla-gla"
    if model_type == "mamba2":
        return "hf-mamba2"
    if "d_model" in config and "n_layer" in config:
        return "mamba_ssm"
    raise ConfigError(
        "config.json is not a statex, fla GLA, mamba_ssm Mamba2 or HF Mamba2 config "
        f"(model_type={model_type!r})"
    )


def _refuse(where: str, **conditions: bool) -> None:
    for what, unsupported in conditions.items():
        if unsupported:
            raise ConfigError(f"{where}: unsupported setting {what}")


def config_from_fla_gla(cfg: dict[str, Any]) -> ModelConfig:
    where = "fla GLA"
    d = _get(cfg, "hidden_size", int, where)
    n_layer = check_layer_count(_get(cfg, "num_hidden_layers", int, where), where)
    vocab = _get(cfg, "vocab_size", int, where)
    heads = _get(cfg, "num_heads", int, where, 4)
    _refuse(
        where,
        **{
            f"num_kv_heads={cfg.get('num_kv_heads')}": cfg.get("num_kv_heads") not in (None, heads),
            f"feature_map={cfg.get('feature_map')!r}": cfg.get("feature_map") is not None,
            "use_output_gate=false": cfg.get("use_output_gate", True) is False,
            "use_gk=false": cfg.get("use_gk", True) is False,
            "use_gv=true": cfg.get("use_gv", False) is True,
            "attn (hybrid softmax-attention layers)": bool(cfg.get("attn")),
            "attnres_block_size": cfg.get("attnres_block_size") is not None,
            "elementwise_affine=false": cfg.get("elementwise_affine", True) is False,
            f"hidden_act={cfg.get('hidden_act')!r}": cfg.get("hidden_act", "swish") not in ("swish", "silu"),
            f"attn_mode={cfg.get('attn_mode')!r}": cfg.get("attn_mode", "chunk")
            not in ("chunk", "fused_chunk", "fused_recurrent"),
        },
    )
    key_dim, value_dim = d * _get(cfg, "expand_k", float, where, 0.5), d * _get(cfg, "expand_v", float, where, 1.0)
    if not (math.isclose(key_dim, round(key_dim)) and math.isclose(value_dim, round(value_dim))):
        raise ConfigError(f"{where}: hidden_size * expand_k and hidden_size * expand_v must be integers")
    norm_eps = _get(cfg, "norm_eps", float, where, 1e-6)
    spec = dict(
        num_heads=heads,
        key_dim=round(key_dim),
        value_dim=round(value_dim),
        use_short_conv=_get(cfg, "use_short_conv", bool, where, False),
        conv_size=_get(cfg, "conv_size", int, where, 4),
        conv_bias=_get(cfg, "conv_bias", bool, where, False),
        gate_low_rank_dim=_get(cfg, "gate_low_rank_dim", int, where, 16),
        gate_logit_normalizer=float(_get(cfg, "gate_logit_normalizer", float, where, 16)),
        clamp_min=_get(cfg, "clamp_min", Optional[float], where, None),
        norm_eps=norm_eps,
    )
    intermediate = _get(cfg, "intermediate_size", int, where, None)
    if intermediate is None:
        ratio = _get(cfg, "hidden_ratio", float, where, 4)
        intermediate = 256 * ((int(d * ratio * 2 / 3) + 255) // 256)
    return ModelConfig(
        family="gla",
        vocab_size=vocab,
        d_model=d,
        layers=[GLASpec(**spec) for _ in range(n_layer)],
        norm_eps=norm_eps,
        tie_embeddings=_get(cfg, "tie_word_embeddings", bool, where, False),
        intermediate_size=intermediate,
        initializer_range=_get(cfg, "initializer_range", float, where, 0.02),
        bos_token_id=_get(cfg, "bos_token_id", int, where, None),
        eos_token_id=_single_id(cfg.get("eos_token_id"), where),
        pad_token_id=_get(cfg, "pad_token_id", int, where, None),
    ).validate()


def rename_fla_gla(key: str) -> str:
    # fla without fuse_norm names the (identical) per-head output norm ``g_norm``.
    if key.endswith(".attn.g_norm.weight"):
        return key[: -len("g_norm.weight")] + "g_norm_swish_gate.weight"
    return key


def config_from_mamba_ssm(cfg: dict[str, Any]) -> ModelConfig:
    where = "mamba_ssm"
    d = _get(cfg, "d_model", int, where)
    n_layer = check_layer_count(_get(cfg, "n_layer", int, where), where)
    vocab = _get(cfg, "vocab_size", int, where)
    ssm = cfg.get("ssm_cfg") or {}
    if not isinstance(ssm, dict):
        raise ConfigError(f"{where}: ssm_cfg must be a mapping, got {ssm!r:.60}")
    ssm = dict(ssm)
    expand = _get(ssm, "expand", int, where, 2)
    layer = ssm.pop("layer", "Mamba1")
    _refuse(
        where,
        **{
            f"ssm_cfg.layer={layer!r} (only Mamba2)": layer != "Mamba2",
            "d_intermediate > 0 (MLP blocks)": bool(cfg.get("d_intermediate", 0)),
            "attn_layer_idx (hybrid attention layers)": bool(cfg.get("attn_layer_idx")),
            "rms_norm=false (LayerNorm)": cfg.get("rms_norm", True) is False,
            "ssm_cfg.d_ssm != d_inner": ssm.get("d_ssm") not in (None, expand * d),
            "ssm_cfg.rmsnorm=false": ssm.get("rmsnorm", True) is False,
            "ssm_cfg.norm_before_gate=true": ssm.get("norm_before_gate", False) is True,
            "ssm_cfg.D_has_hdim=true": ssm.get("D_has_hdim", False) is True,
        },
    )
    d_inner = expand * d
    headdim = _get(ssm, "headdim", int, where, 64)
    if headdim < 1 or d_inner % headdim:
        raise ConfigError(f"{where}: headdim={headdim} does not divide d_inner={d_inner}")
    spec = dict(
        d_state=_get(ssm, "d_state", int, where, 128),
        nheads=d_inner // headdim,
        headdim=headdim,
        ngroups=_get(ssm, "ngroups", int, where, 1),
        d_conv=_get(ssm, "d_conv", int, where, 4),
        conv_bias=_get(ssm, "conv_bias", bool, where, True),
        bias=_get(ssm, "bias", bool, where, False),
        dt_limit=time_step_limit(ssm.get("dt_limit", (0.0, math.inf)), where),
        norm_eps=1e-5,  # mamba_ssm's Mamba2 hard-codes the gated norm's eps
        chunk_size=_get(ssm, "chunk_size", int, where, 256),
    )
    multiple = _get(cfg, "pad_vocab_size_multiple", int, where, 8)
    if multiple > 0 and vocab % multiple:
        vocab += multiple - vocab % multiple
    return ModelConfig(
        family="mamba2",
        vocab_size=vocab,
        d_model=d,
        layers=[Mamba2Spec(**spec) for _ in range(n_layer)],
        norm_eps=_get(cfg, "norm_epsilon", float, where, 1e-5),
        tie_embeddings=_get(cfg, "tie_embeddings", bool, where, True),
        residual_in_fp32=_get(cfg, "residual_in_fp32", bool, where, True),
    ).validate()


def config_from_hf_mamba2(cfg: dict[str, Any]) -> ModelConfig:
    where = "HF Mamba2"
    # HF's Mamba2Config defaults describe a 7B model (n_groups 8, num_heads 128): require the shape fields.
    d, expand = _get(cfg, "hidden_size", int, where), _get(cfg, "expand", int, where, 2)
    n_layer = check_layer_count(_get(cfg, "num_hidden_layers", int, where), where)
    vocab = _get(cfg, "vocab_size", int, where)
    heads, headdim = _get(cfg, "num_heads", int, where), _get(cfg, "head_dim", int, where)
    state, groups = _get(cfg, "state_size", int, where), _get(cfg, "n_groups", int, where)
    if heads * headdim != expand * d:
        raise ConfigError(
            f"{where}: num_heads * head_dim ({heads * headdim}) must equal expand * hidden_size ({expand * d})"
        )
    _refuse(where, **{"rms_norm=false": cfg.get("rms_norm", True) is False,
                      f"hidden_act={cfg.get('hidden_act')!r}": cfg.get("hidden_act", "silu") not in ("silu", "swish")})
    eps = _get(cfg, "layer_norm_epsilon", float, where, 1e-5)
    spec = dict(
        d_state=state,
        nheads=heads,
        headdim=headdim,
        ngroups=groups,
        d_conv=_get(cfg, "conv_kernel", int, where, 4),
        conv_bias=_get(cfg, "use_conv_bias", bool, where, True),
        bias=_get(cfg, "use_bias", bool, where, False),
        dt_limit=time_step_limit(cfg.get("time_step_limit", (0.0, math.inf)), where),
        norm_eps=eps,
        chunk_size=_get(cfg, "chunk_size", int, where, 256),
    )
    return ModelConfig(
        family="mamba2",
        vocab_size=vocab,
        d_model=d,
        layers=[Mamba2Spec(**spec) for _ in range(n_layer)],
        norm_eps=eps,
        tie_embeddings=_get(cfg, "tie_word_embeddings", bool, where, False),
        residual_in_fp32=_get(cfg, "residual_in_fp32", bool, where, True),
        bos_token_id=_get(cfg, "bos_token_id", int, where, None),
        eos_token_id=_single_id(cfg.get("eos_token_id"), where),
        pad_token_id=_get(cfg, "pad_token_id", int, where, None),
    ).validate()


def rename_hf_mamba2(key: str) -> str:
    if key == "backbone.embeddings.weight":
        return "backbone.embedding.weight"
    return key


def _single_id(value: Any, where: str) -> int | None:
    if isinstance(value, list):
        value = value[0] if value else None
    if value is not None and not value_matches(value, int):
        raise ConfigError(f"{where}: config field eos_token_id must be an integer, got {value!r:.60}")
    return value


def _identity(key: str) -> str:
    return key


CONFIG_READERS: dict[str, Callable[[dict[str, Any]], ModelConfig]] = {
    "statex": ModelConfig.from_dict,
    "fla-gla": config_from_fla_gla,
    "mamba_ssm": config_from_mamba_ssm,
    "hf-mamba2": config_from_hf_mamba2,
}

# Every source accepts either Mamba2 embedding name, so the rename is applied to all Mamba2 sources.
RENAMERS: dict[str, Callable[[str], str]] = {
    "statex": rename_hf_mamba2,
    "fla-gla": rename_fla_gla,
    "mamba_ssm": rename_hf_mamba2,
    "hf-mamba2": rename_hf_mamba2,
}
