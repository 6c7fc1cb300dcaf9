"""Per-token reference recurrence for Mamba2's SSM (Dao and Gu, "Transformers are SSMs", 2024), written from the definition.

Per head h in group g(h) = h // (H / G):
    S_t = exp(dt_t A_h) S_{t-1} + dt_t x_t^T B_t      S_t: [P, N]
    y_t = S_t C_t^T + D_h x_t
"""
from __future__ import annotations

import torch


def naive_recurrent_ssd(
    x: torch.Tensor,  # [B, T, H, P]
    dt: torch.Tensor,  # [B, T, H], after softplus and clamping
    A: torch.Tensor,  # [H], negative
    B: torch.Tensor,  # [B, T, G, N]
    C: torch.Tensor,  # [B, T, G, N]
    D: torch.Tensor | None = None,  # [H]
    initial_state: torch.Tensor | None = None,  # [B, H, P, N]
) -> tuple[torch.Tensor, torch.Tensor]:
    batch, length, heads, headdim = x.shape
    groups, d_state = B.shape[-2:]
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    heads_per_group = heads // groups
    state = x.new_zeros(batch, heads, headdim, d_state, dtype=dtype)
    if initial_state is not None:
        state = state + initial_state.to(dtype)
    outputs = []
    for t in range(length):
        x_t, dt_t = x[:, t].to(dtype), dt[:, t].to(dtype)
        B_t = B[:, t].to(dtype).repeat_interleave(heads_per_group, dim=1)  # [B, H, N]
        C_t = C[:, t].to(dtype).repeat_interleave(heads_per_group, dim=1)
        decay = (dt_t * A.to(dtype)).exp()[..., None, None]
        state = decay * state + (dt_t[..., None] * x_t).unsqueeze(-1) * B_t.unsqueeze(-2)
        y_t = torch.einsum("bhpn,bhn->bhp", state, C_t)
        if D is not None:
            y_t = y_t + D.to(dtype)[:, None] * x_t
        outputs.append(y_t)
    out = torch.stack(outputs, dim=1) if outputs else x.new_zeros(x.shape, dtype=dtype)
    return out.to(x.dtype), state
