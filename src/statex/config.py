"""Model configuration: one dataclass for the whole model plus one mixer spec per layer.

StateX makes layers differ from each other (some GLA layers get fewer, larger heads; some Mamba2 layers a
larger d_state), so every layer records its own mixer shapes. ``ModelConfig.to_dict`` / ``from_dict`` give the
project's ``config.json``; a saved StateX model reloads with no extra flags.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Union

from statex.errors import ConfigError
from statex.validation import check_field_types

FORMAT_NAME = "statex"
FORMAT_VERSION = 1
# Sanity bounds of a config's structure (a config is read before anything is allocated, so these keep even
# ``statex inspect`` of a hostile file cheap); what fits in memory is checked where weights are allocated.
MAX_LAYERS = 65_536
MAX_DIM = 2**31 - 1  # a tensor dimension torch indexes with 32-bit offsets in places


@dataclass
class GLASpec:
    """One GLA mixer (fla ``GatedLinearAttention``). State per layer = key_dim * value_dim / num_heads."""

    num_heads: int
    key_dim: int  # total over heads (fla: hidden_size * expand_k)
    value_dim: int  # total over heads (fla: hidden_size * expand_v)
    use_short_conv: bool = False
    conv_size: int = 4
    conv_bias: bool = False
    gate_low_rank_dim: int = 16
    gate_logit_normalizer: float = 16.0
    clamp_min: float | None = None
    norm_eps: float = 1e-6  # eps of the per-head output RMSNorm (fla: config.norm_eps)
    kind: str = field(default="gla", init=False)

    @property
    def head_k_dim(self) -> int:
        return self.key_dim // self.num_heads

    @property
    def head_v_dim(self) -> int:
        return self.value_dim // self.num_heads

    @property
    def state_elements(self) -> int:
        return self.num_heads * self.head_k_dim * self.head_v_dim

    @property
    def conv_state_elements(self) -> int:
        if not self.use_short_conv:
            return 0
        return (2 * self.key_dim + self.value_dim) * (self.conv_size - 1)

    def validate(self, where: str) -> None:
        check_field_types(self, f"{where}: ")
        _positive(where, num_heads=self.num_heads, key_dim=self.key_dim, value_dim=self.value_dim,
                  conv_size=self.conv_size, gate_low_rank_dim=self.gate_low_rank_dim)
        if self.norm_eps <= 0 or self.gate_logit_normalizer <= 0:
            raise ConfigError(f"{where}: norm_eps and gate_logit_normalizer must be positive")
        if self.key_dim % self.num_heads or self.value_dim % self.num_heads:
            raise ConfigError(
                f"{where}: num_heads={self.num_heads} must divide key_dim={self.key_dim} "
                f"and value_dim={self.value_dim}"
            )


@dataclass
class Mamba2Spec:
    """One Mamba2 mixer (mamba_ssm ``Mamba2``). State per layer = nheads * headdim * d_state."""

    d_state: int
    nheads: int
    headdim: int
    ngroups: int = 1
    d_conv: int = 4
    conv_bias: bool = True
    bias: bool = False  # in_proj / out_proj bias
    dt_limit: tuple[float, float] = (0.0, math.inf)
    norm_eps: float = 1e-5  # eps of the gated RMSNorm
    chunk_size: int = 256  # recorded for GPU kernels and export; the CPU kernel picks its own
    kind: str = field(default="mamba2", init=False)

    @property
    def d_inner(self) -> int:
        return self.nheads * self.headdim

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.ngroups * self.d_state

    @property
    def in_proj_dim(self) -> int:
        # [z (d_inner) | x (d_inner) | B (G*N) | C (G*N) | dt (nheads)]
        return 2 * self.d_inner + 2 * self.ngroups * self.d_state + self.nheads

    @property
    def state_elements(self) -> int:
        return self.nheads * self.headdim * self.d_state

    @property
    def conv_state_elements(self) -> int:
        return self.conv_dim * (self.d_conv - 1)

    def validate(self, where: str) -> None:
        check_field_types(self, f"{where}: ")
        _positive(where, d_state=self.d_state, nheads=self.nheads, headdim=self.headdim,
                  ngroups=self.ngroups, d_conv=self.d_conv, chunk_size=self.chunk_size)
        if self.norm_eps <= 0:
            raise ConfigError(f"{where}: norm_eps must be positive, got {self.norm_eps}")
        if self.nheads % self.ngroups:
            raise ConfigError(f"{where}: ngroups={self.ngroups} must divide nheads={self.nheads}")
        lo, hi = self.dt_limit
        if not (0.0 <= lo < hi) or math.isinf(lo):
            raise ConfigError(f"{where}: dt_limit must satisfy 0 <= low < high, got {self.dt_limit}")


MixerSpec = Union[GLASpec, Mamba2Spec]
_SPEC_CLASSES = {"gla": GLASpec, "mamba2": Mamba2Spec}


@dataclass
class ModelConfig:
    """A causal LM: embeddings -> blocks (one mixer spec each) -> final RMSNorm -> lm_head.

    family "gla": fla GLAForCausalLM layout (each block: attn_norm, attn, mlp_norm, SwiGLU mlp).
    family "mamba2": mamba_ssm MambaLMHeadModel layout (each block: norm, mixer; no MLP).
    """

    family: str
    vocab_size: int
    d_model: int
    layers: list[MixerSpec]
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    intermediate_size: int | None = None  # GLA SwiGLU width; None for Mamba2
    residual_in_fp32: bool = True  # Mamba2 only
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # operations applied (e.g. statex-expand)

    @property
    def n_layer(self) -> int:
        return len(self.layers)

    def validate(self) -> "ModelConfig":
        if self.family not in _SPEC_CLASSES:
            raise ConfigError(f"unknown model family {self.family!r} (expected 'gla' or 'mamba2')")
        check_field_types(self, "config field ")
        _positive("model", vocab_size=self.vocab_size, d_model=self.d_model, n_layer=len(self.layers))
        check_layer_count(len(self.layers))
        if self.norm_eps <= 0 or self.initializer_range < 0:
            raise ConfigError("config: norm_eps must be positive and initializer_range non-negative")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            token = getattr(self, name)
            if token is not None and not 0 <= token < self.vocab_size:
                raise ConfigError(f"config: {name}={token} is outside the vocabulary [0, {self.vocab_size})")
        if not all(isinstance(entry, dict) for entry in self.history):
            raise ConfigError("config field history must be a list of objects")
        for i, spec in enumerate(self.layers):
            if not isinstance(spec, (GLASpec, Mamba2Spec)):
                raise ConfigError(f"layer {i}: not a mixer spec")
            if spec.kind != self.family:
                raise ConfigError(f"layer {i}: mixer kind {spec.kind!r} does not match family {self.family!r}")
            spec.validate(f"layer {i}")
        if self.family == "gla":
            if not self.intermediate_size or self.intermediate_size <= 0:
                raise ConfigError("a GLA config needs a positive intermediate_size")
            _positive("model", intermediate_size=self.intermediate_size)
        return self

    def parameter_count(self) -> int:
        """Parameters of the model this config builds, counted from the shapes alone (no allocation)."""
        d = self.d_model
        total = self.vocab_size * d * (1 if self.tie_embeddings else 2) + d  # embeddings, head, final norm
        for spec in self.layers:
            if isinstance(spec, GLASpec):
                k, v, r = spec.key_dim, spec.value_dim, spec.gate_low_rank_dim
                total += d * (2 * k + 2 * v) + v * d + d * r + r * k + k + spec.head_v_dim  # q k v g o, gate, norm
                if spec.use_short_conv:
                    total += (2 * k + v) * (spec.conv_size + int(spec.conv_bias))
                total += 2 * d + 3 * d * (self.intermediate_size or 0)  # attn_norm, mlp_norm, SwiGLU
            else:
                bias = int(spec.bias)
                total += (d + bias) * spec.in_proj_dim + (spec.d_inner + bias) * d
                total += spec.conv_dim * (spec.d_conv + int(spec.conv_bias)) + 3 * spec.nheads + spec.d_inner + d
        return total

    def to_dict(self) -> dict[str, Any]:
        out = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "layers":
                value = [_spec_to_dict(s) for s in value]
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        data = dict(data)
        data.pop("format", None)
        version = data.pop("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ConfigError(f"config format_version must be a positive integer, got {version!r}")
        if version > FORMAT_VERSION:
            raise ConfigError(f"config format_version {version} is newer than this statex ({FORMAT_VERSION})")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
        for required in ("family", "vocab_size", "d_model", "layers"):
            if required not in data:
                raise ConfigError(f"config is missing the field {required!r}")
        if not isinstance(data["layers"], list):
            raise ConfigError("config field 'layers' must be a list of mixer specs")
        check_layer_count(len(data["layers"]))
        data["layers"] = [_spec_from_dict(d, i) for i, d in enumerate(data["layers"])]
        return cls(**data).validate()


def _spec_to_dict(spec: MixerSpec) -> dict[str, Any]:
    d = dataclasses.asdict(spec)
    d = {"kind": d.pop("kind"), **d}
    if isinstance(spec, Mamba2Spec):
        d["dt_limit"] = [spec.dt_limit[0], None if math.isinf(spec.dt_limit[1]) else spec.dt_limit[1]]
    return d


def _spec_from_dict(data: Any, index: int) -> MixerSpec:
    if not isinstance(data, dict):
        raise ConfigError(f"layer {index}: mixer spec must be an object")
    data = dict(data)
    kind = data.pop("kind", None)
    if kind not in _SPEC_CLASSES:
        raise ConfigError(f"layer {index}: unknown mixer kind {kind!r} (expected 'gla' or 'mamba2')")
    spec_cls = _SPEC_CLASSES[kind]
    names = {f.name for f in dataclasses.fields(spec_cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"layer {index}: unknown {kind} field(s): {', '.join(unknown)}")
    if kind == "mamba2" and "dt_limit" in data:
        data["dt_limit"] = time_step_limit(data["dt_limit"], f"layer {index}")
    try:
        return spec_cls(**data)
    except TypeError as exc:
        raise ConfigError(f"layer {index}: {exc}") from None


def check_layer_count(n_layer: Any, where: str = "config") -> int:
    """A layer count read from a config, refused before a list of that many layers is built."""
    if not isinstance(n_layer, int) or isinstance(n_layer, bool) or n_layer < 1:
        raise ConfigError(f"{where}: the number of layers must be a positive integer, got {n_layer!r}")
    if n_layer > MAX_LAYERS:
        raise ConfigError(f"{where}: {n_layer:,} layers is more than statex supports ({MAX_LAYERS:,})")
    return n_layer


def time_step_limit(value: Any, where: str) -> tuple[float, float]:
    """Mamba2's (low, high) time-step limit; accepts numbers, null/None for infinity, "inf"/"Infinity" strings
    and transformers' ``{"__float__": "Infinity"}`` encoding."""

    def as_float(v: Any) -> float:
        if v is None:
            return math.inf
        if isinstance(v, dict) and "__float__" in v:
            v = v["__float__"]
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise ConfigError(f"{where}: cannot read the time-step limit value {v!r}")
        try:
            out = float(v)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{where}: cannot read the time-step limit value {v!r}") from None
        if math.isnan(out):
            raise ConfigError(f"{where}: the time-step limit cannot be NaN")
        return out

    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(f"{where}: the time-step limit dt_limit must be a pair (low, high), got {value!r}")
    return as_float(value[0]), as_float(value[1])


def _positive(where: str, **values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{where}: {name} must be a positive integer, got {value!r:.60}")
        if value > MAX_DIM:
            raise ConfigError(f"{where}: {name}={value} is larger than any tensor can be ({MAX_DIM})")


def gla_intermediate_size(d_model: int, hidden_ratio: float = 4) -> int:
    """fla's SwiGLU width: 256 * ceil(int(d * hidden_ratio * 2/3) / 256)."""
    width = int(d_model * hidden_ratio * 2 / 3)
    return 256 * ((width + 255) // 256)


def gla_config(
    vocab_size: int,
    d_model: int,
    n_layer: int,
    num_heads: int = 4,
    expand_k: float = 0.5,
    expand_v: float = 1.0,
    hidden_ratio: float = 4,
    intermediate_size: int | None = None,
    use_short_conv: bool = False,
    conv_size: int = 4,
    norm_eps: float = 1e-6,
    tie_embeddings: bool = False,
    **kwargs: Any,
) -> ModelConfig:
    """A uniform GLA config with fla's parameterisation (hidden_size * expand_k etc.)."""
    key_dim, value_dim = _exact_int(d_model * expand_k, "d_model * expand_k"), _exact_int(
        d_model * expand_v, "d_model * expand_v"
    )
    spec = dict(num_heads=num_heads, key_dim=key_dim, value_dim=value_dim, use_short_conv=use_short_conv,
                conv_size=conv_size, norm_eps=norm_eps)
    return ModelConfig(
        family="gla",
        vocab_size=vocab_size,
        d_model=d_model,
        layers=[GLASpec(**spec) for _ in range(n_layer)],
        norm_eps=norm_eps,
        tie_embeddings=tie_embeddings,
        intermediate_size=intermediate_size or gla_intermediate_size(d_model, hidden_ratio),
        **kwargs,
    ).validate()


def mamba2_config(
    vocab_size: int,
    d_model: int,
    n_layer: int,
    d_state: int = 128,
    headdim: int = 64,
    expand: int = 2,
    ngroups: int = 1,
    d_conv: int = 4,
    norm_eps: float = 1e-5,
    tie_embeddings: bool = True,
    **kwargs: Any,
) -> ModelConfig:
    """A uniform Mamba2 config with mamba_ssm's parameterisation (d_inner = expand * d_model)."""
    d_inner = expand * d_model
    if d_inner % headdim:
        raise ConfigError(f"headdim={headdim} must divide d_inner={d_inner}")
    spec = dict(d_state=d_state, nheads=d_inner // headdim, headdim=headdim, ngroups=ngroups, d_conv=d_conv,
                norm_eps=norm_eps)
    return ModelConfig(
        family="mamba2",
        vocab_size=vocab_size,
        d_model=d_model,
        layers=[Mamba2Spec(**spec) for _ in range(n_layer)],
        norm_eps=norm_eps,
        tie_embeddings=tie_embeddings,
        **kwargs,
    ).validate()


def _exact_int(value: float, what: str) -> int:
    rounded = round(value)
    if not math.isclose(value, rounded):
        raise ConfigError(f"{what} must be an integer, got {value}")
    return rounded
