"""GLA mixer and block with fla's math and parameter names (fla-org/flash-linear-attention, fla/layers/gla.py).

Mixer, per head of key dim dk and value dim dv:
    q, k, v = x Wq, x Wk, x Wv            (each optionally followed by a causal short conv + SiLU)
    gk = logsigmoid(x Wa Wb + b) / 16     per-key-channel log decay (gk_proj.0, gk_proj.1)
    S_t = diag(exp(gk_t)) S_{t-1} + k_t^T v_t;   o_t = (q_t dk^-0.5) S_t
    out = o_proj(rmsnorm_per_head(o) * swish(x Wg))
Block: x + attn(attn_norm(x)), then + mlp(mlp_norm(x)) with a SwiGLU MLP.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from statex.config import GLASpec
from statex.models.layers import CausalConv1d, GroupedGatedRMSNorm, RMSNorm
from statex.runtime import dispatch


@dataclass
class GLAState:
    recurrent: torch.Tensor  # [B, H, dk, dv], fp32
    conv: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # q, k, v conv states [B, D, conv_size-1]


class GLAMixer(nn.Module):
    def __init__(self, d_model: int, spec: GLASpec):
        super().__init__()
        self.spec = spec
        self.num_heads = spec.num_heads
        self.head_k_dim, self.head_v_dim = spec.head_k_dim, spec.head_v_dim
        self.scale = self.head_k_dim**-0.5
        self.q_proj = nn.Linear(d_model, spec.key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, spec.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, spec.value_dim, bias=False)
        self.g_proj = nn.Linear(d_model, spec.value_dim, bias=False)  # output gate
        if spec.use_short_conv:
            self.q_conv1d = CausalConv1d(spec.key_dim, spec.conv_size, spec.conv_bias)
            self.k_conv1d = CausalConv1d(spec.key_dim, spec.conv_size, spec.conv_bias)
            self.v_conv1d = CausalConv1d(spec.value_dim, spec.conv_size, spec.conv_bias)
        # low-rank decay projection: [d_model -> gate_low_rank_dim -> key_dim (+ bias)]
        self.gk_proj = nn.Sequential(
            nn.Linear(d_model, spec.gate_low_rank_dim, bias=False),
            nn.Linear(spec.gate_low_rank_dim, spec.key_dim, bias=True),
        )
        self.o_proj = nn.Linear(spec.value_dim, d_model, bias=False)
        self.g_norm_swish_gate = GroupedGatedRMSNorm(
            self.head_v_dim, group_size=self.head_v_dim, eps=spec.norm_eps, norm_before_gate=True
        )

    def empty_state(self, batch: int, device=None, dtype=None) -> GLAState:
        spec = self.spec
        recurrent = torch.zeros(batch, spec.num_heads, self.head_k_dim, self.head_v_dim, device=device,
                                dtype=torch.float64 if dtype == torch.float64 else torch.float32)
        conv = None
        if spec.use_short_conv:
            conv = tuple(c.empty_state(batch, device, dtype) for c in (self.q_conv1d, self.k_conv1d, self.v_conv1d))
        return GLAState(recurrent, conv)

    def forward(
        self, x: torch.Tensor, state: GLAState | None = None, chunk_size: int = 32, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, GLAState]:
        """x: [B, T, d_model] -> (out [B, T, d_model], state after the last token). ``mask`` [B, T] (1: a token,
        0: left padding): padded positions add nothing to the state and reach the convolutions as zeros, so a
        left-padded row computes what the unpadded row computes."""
        batch, length, _ = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if mask is not None:
            keep = mask.to(q.dtype).unsqueeze(-1)
            q, k, v = q * keep, k * keep, v * keep
        conv_state = None
        if self.spec.use_short_conv:
            old = state.conv if state is not None and state.conv is not None else (None, None, None)
            q, cq = self.q_conv1d(q, old[0])
            k, ck = self.k_conv1d(k, old[1])
            v, cv = self.v_conv1d(v, old[2])
            conv_state = (cq, ck, cv)
        gk = F.logsigmoid(self.gk_proj(x).float()) / self.spec.gate_logit_normalizer
        if self.spec.clamp_min is not None:
            gk = gk.clamp_min(self.spec.clamp_min)
        if mask is not None:  # no key (nothing written) and no decay at a padded position
            k = k * keep
            gk = gk * mask.to(gk.dtype).unsqueeze(-1)

        heads = self.num_heads
        q = q.view(batch, length, heads, self.head_k_dim)
        k = k.view(batch, length, heads, self.head_k_dim)
        v = v.view(batch, length, heads, self.head_v_dim)
        gk = gk.view(batch, length, heads, self.head_k_dim)
        initial = state.recurrent if state is not None else None
        # CUDA: fla's fused_recurrent_gla / chunk_gla (large heads as sub-heads); else statex.ops' torch GLA
        if length == 1 and initial is not None:
            o, recurrent = dispatch.gla_step(q[:, 0], k[:, 0], v[:, 0], gk[:, 0], initial, self.scale)
            o = o.unsqueeze(1)
        else:
            o, recurrent = dispatch.gla_chunk(q, k, v, gk, self.scale, initial, chunk_size)

        gate = self.g_proj(x).view(batch, length, heads, self.head_v_dim)
        o = self.g_norm_swish_gate(o.to(x.dtype), gate).reshape(batch, length, -1)
        return self.o_proj(o), GLAState(recurrent, conv_state)


class GLAMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, d_model: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, intermediate_size, bias=False)
        self.up_proj = nn.Linear(d_model, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class GLABlock(nn.Module):
    def __init__(self, d_model: int, spec: GLASpec, intermediate_size: int, norm_eps: float):
        super().__init__()
        self.attn_norm = RMSNorm(d_model, eps=norm_eps)
        self.attn = GLAMixer(d_model, spec)
        self.mlp_norm = RMSNorm(d_model, eps=norm_eps)
        self.mlp = GLAMLP(d_model, intermediate_size)

    def empty_state(self, batch: int, device=None, dtype=None) -> GLAState:
        return self.attn.empty_state(batch, device, dtype)

    def forward(self, x: torch.Tensor, state: GLAState | None = None,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, GLAState]:
        mixed, state = self.attn(self.attn_norm(x), state, mask=mask)
        x = x + mixed
        x = x + self.mlp(self.mlp_norm(x))
        return x, state

    @torch.no_grad()
    def init_weights(self, std: float) -> None:
        """fla's init: every Linear ~ N(0, std) with zero bias; norms to one; convs keep nn.Conv1d's default."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (RMSNorm, GroupedGatedRMSNorm)):
                nn.init.ones_(module.weight)
            elif isinstance(module, CausalConv1d):
                module.reset_parameters()
