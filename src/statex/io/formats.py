"""Translating foreign config.json files into a ``ModelConfig``, and their weight names into ours.

Supported sources:
- ``statex``:    the project's own format (``config.json`` with ``"format": "statex"``)
- ``fla-gla``:   fla-hub GLA (``model_type: gla``), fla's names == ours
- ``mamba_ssm``: official state-spaces Mamba2 (``d_model``, ``n_layer``, ``ssm_cfg``), mamba_ssm's names == ours
- ``hf-mamba2``: HF transformers Mamba2 (``model_type: mamba2``), ``backbone.embeddings`` -> ``backbone.embedding``
"""
from __future__ import annotations

import math
from typing import Any, Callable

from statex.config import GLASpec, Mamba2Spec, ModelConfig
from statex.errors import ConfigError


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


def _require(config: dict[str, Any], *names: str, where: str) -> None:
    for name in names:
        if name not in config:
            raise ConfigError(f"{where} config is missing the field {name!r}")


def _refuse(where: str, **conditions: bool) -> None:
    for what, unsupported in conditions.items():
        if unsupported:
            raise ConfigError(f"{where}: unsupported setting {what}")


def config_from_fla_gla(cfg: dict[str, Any]) -> ModelConfig:
    where = "fla GLA"
    _require(cfg, "hidden_size", "num_hidden_layers", "vocab_size", where=where)
    d = cfg["hidden_size"]
    heads = cfg.get("num_heads", 4)
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
    key_dim, value_dim = d * cfg.get("expand_k", 0.5), d * cfg.get("expand_v", 1.0)
    if not (math.isclose(key_dim, round(key_dim)) and math.isclose(value_dim, round(value_dim))):
        raise ConfigError(f"{where}: hidden_size * expand_k and hidden_size * expand_v must be integers")
    norm_eps = cfg.get("norm_eps", 1e-6)
    spec = dict(
        num_heads=heads,
        key_dim=round(key_dim),
        value_dim=round(value_dim),
        use_short_conv=bool(cfg.get("use_short_conv", False)),
        conv_size=cfg.get("conv_size", 4),
        conv_bias=bool(cfg.get("conv_bias", False)),
        gate_low_rank_dim=cfg.get("gate_low_rank_dim", 16),
        gate_logit_normalizer=float(cfg.get("gate_logit_normalizer", 16)),
        clamp_min=cfg.get("clamp_min"),
        norm_eps=norm_eps,
    )
    intermediate = cfg.get("intermediate_size")
    if intermediate is None:
        ratio = cfg.get("hidden_ratio") or 4
        intermediate = 256 * ((int(d * ratio * 2 / 3) + 255) // 256)
    return ModelConfig(
        family="gla",
        vocab_size=cfg["vocab_size"],
        d_model=d,
        layers=[GLASpec(**spec) for _ in range(cfg["num_hidden_layers"])],
        norm_eps=norm_eps,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        intermediate_size=intermediate,
        initializer_range=cfg.get("initializer_range", 0.02),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_id=_single_id(cfg.get("eos_token_id")),
        pad_token_id=cfg.get("pad_token_id"),
    ).validate()


def rename_fla_gla(key: str) -> str:
    # fla without fuse_norm names the (identical) per-head output norm ``g_norm``.
    if key.endswith(".attn.g_norm.weight"):
        return key[: -len("g_norm.weight")] + "g_norm_swish_gate.weight"
    return key


def config_from_mamba_ssm(cfg: dict[str, Any]) -> ModelConfig:
    where = "mamba_ssm"
    _require(cfg, "d_model", "n_layer", "vocab_size", where=where)
    ssm = dict(cfg.get("ssm_cfg") or {})
    layer = ssm.pop("layer", "Mamba1")
    _refuse(
        where,
        **{
            f"ssm_cfg.layer={layer!r} (only Mamba2)": layer != "Mamba2",
            "d_intermediate > 0 (MLP blocks)": bool(cfg.get("d_intermediate", 0)),
            "attn_layer_idx (hybrid attention layers)": bool(cfg.get("attn_layer_idx")),
            "rms_norm=false (LayerNorm)": cfg.get("rms_norm", True) is False,
            "ssm_cfg.d_ssm != d_inner": ssm.get("d_ssm") not in (None, ssm.get("expand", 2) * cfg["d_model"]),
            "ssm_cfg.rmsnorm=false": ssm.get("rmsnorm", True) is False,
            "ssm_cfg.norm_before_gate=true": ssm.get("norm_before_gate", False) is True,
            "ssm_cfg.D_has_hdim=true": ssm.get("D_has_hdim", False) is True,
        },
    )
    d = cfg["d_model"]
    d_inner = ssm.get("expand", 2) * d
    headdim = ssm.get("headdim", 64)
    if d_inner % headdim:
        raise ConfigError(f"{where}: headdim={headdim} does not divide d_inner={d_inner}")
    spec = dict(
        d_state=ssm.get("d_state", 128),
        nheads=d_inner // headdim,
        headdim=headdim,
        ngroups=ssm.get("ngroups", 1),
        d_conv=ssm.get("d_conv", 4),
        conv_bias=bool(ssm.get("conv_bias", True)),
        bias=bool(ssm.get("bias", False)),
        dt_limit=_limit_pair(ssm.get("dt_limit", (0.0, math.inf)), where),
        norm_eps=1e-5,  # mamba_ssm's Mamba2 hard-codes the gated norm's eps
        chunk_size=ssm.get("chunk_size", 256),
    )
    vocab = cfg["vocab_size"]
    multiple = cfg.get("pad_vocab_size_multiple", 8)
    if multiple and vocab % multiple:
        vocab += multiple - vocab % multiple
    return ModelConfig(
        family="mamba2",
        vocab_size=vocab,
        d_model=d,
        layers=[Mamba2Spec(**spec) for _ in range(cfg["n_layer"])],
        norm_eps=cfg.get("norm_epsilon", 1e-5),
        tie_embeddings=bool(cfg.get("tie_embeddings", True)),
        residual_in_fp32=bool(cfg.get("residual_in_fp32", True)),
    ).validate()


def config_from_hf_mamba2(cfg: dict[str, Any]) -> ModelConfig:
    where = "HF Mamba2"
    # HF's Mamba2Config defaults describe a 7B model (n_groups 8, num_heads 128): require the shape fields.
    _require(cfg, "hidden_size", "num_hidden_layers", "vocab_size", "num_heads", "head_dim", "state_size",
             "n_groups", where=where)
    d, expand = cfg["hidden_size"], cfg.get("expand", 2)
    if cfg["num_heads"] * cfg["head_dim"] != expand * d:
        raise ConfigError(
            f"{where}: num_heads * head_dim ({cfg['num_heads'] * cfg['head_dim']}) must equal "
            f"expand * hidden_size ({expand * d})"
        )
    _refuse(where, **{"rms_norm=false": cfg.get("rms_norm", True) is False,
                      f"hidden_act={cfg.get('hidden_act')!r}": cfg.get("hidden_act", "silu") not in ("silu", "swish")})
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    spec = dict(
        d_state=cfg["state_size"],
        nheads=cfg["num_heads"],
        headdim=cfg["head_dim"],
        ngroups=cfg["n_groups"],
        d_conv=cfg.get("conv_kernel", 4),
        conv_bias=bool(cfg.get("use_conv_bias", True)),
        bias=bool(cfg.get("use_bias", False)),
        dt_limit=_limit_pair(cfg.get("time_step_limit", (0.0, math.inf)), where),
        norm_eps=eps,
        chunk_size=cfg.get("chunk_size", 256),
    )
    return ModelConfig(
        family="mamba2",
        vocab_size=cfg["vocab_size"],
        d_model=d,
        layers=[Mamba2Spec(**spec) for _ in range(cfg["num_hidden_layers"])],
        norm_eps=eps,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        residual_in_fp32=bool(cfg.get("residual_in_fp32", True)),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_id=_single_id(cfg.get("eos_token_id")),
        pad_token_id=cfg.get("pad_token_id"),
    ).validate()


def rename_hf_mamba2(key: str) -> str:
    if key == "backbone.embeddings.weight":
        return "backbone.embedding.weight"
    return key


def _limit_pair(value: Any, where: str) -> tuple[float, float]:
    """A (low, high) time-step limit; accepts numbers, null/None for infinity, "inf"/"Infinity" strings and
    transformers' ``{"__float__": "Infinity"}`` encoding."""

    def as_float(v: Any) -> float:
        if v is None:
            return math.inf
        if isinstance(v, dict) and "__float__" in v:
            v = v["__float__"]
        try:
            return float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: cannot read the time-step limit value {v!r}") from None

    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(f"{where}: the time-step limit must be a pair (low, high), got {value!r}")
    return as_float(value[0]), as_float(value[1])


def _single_id(value: Any) -> int | None:
    if isinstance(value, list):
        return value[0] if value else None
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
