"""Per-token reference recurrence for GLA, written from the definition (Yang et al., "Gated Linear Attention Transformers with Hardware-Efficient Training", 2024).

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t        S_t: [K, V] per head
    o_t = (q_t * scale) S_t
"""
from __future__ import annotations

import torch


def naive_recurrent_gla(
    q: torch.Tensor,  # [B, T, H, K]
    k: torch.Tensor,  # [B, T, H, K]
    v: torch.Tensor,  # [B, T, H, V]
    g: torch.Tensor,  # [B, T, H, K] log decay, <= 0
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,  # [B, H, K, V]
) -> tuple[torch.Tensor, torch.Tensor]:
    batch, length, heads, key_dim = q.shape
    value_dim = v.shape[-1]
    scale = key_dim**-0.5 if scale is None else scale
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    state = q.new_zeros(batch, heads, key_dim, value_dim, dtype=dtype)
    if initial_state is not None:
        state = state + initial_state.to(dtype)
    outputs = []
    for t in range(length):
        q_t, k_t, v_t, g_t = (x[:, t].to(dtype) for x in (q, k, v, g))
        state = g_t.exp().unsqueeze(-1) * state + k_t.unsqueeze(-1) * v_t.unsqueeze(-2)
        outputs.append(torch.einsum("bhk,bhkv->bhv", q_t * scale, state))
    out = torch.stack(outputs, dim=1) if outputs else v.new_zeros(batch, 0, heads, value_dim, dtype=dtype)
    return out.to(v.dtype), state
