"""One decoding step of Mamba2's SSM: the recurrence of naive.py for a single token."""
from __future__ import annotations

import torch


def recurrent_ssd_step(
    x: torch.Tensor,  # [B, H, P]
    dt: torch.Tensor,  # [B, H]
    A: torch.Tensor,  # [H]
    B: torch.Tensor,  # [B, G, N]
    C: torch.Tensor,  # [B, G, N]
    D: torch.Tensor | None,  # [H]
    state: torch.Tensor,  # [B, H, P, N], fp32 (or fp64)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (y [B, H, P] in the state's dtype, new state)."""
    dtype = state.dtype
    heads, groups = x.shape[1], B.shape[1]
    x, dt = x.to(dtype), dt.to(dtype)
    B = B.to(dtype).repeat_interleave(heads // groups, dim=1)
    C = C.to(dtype).repeat_interleave(heads // groups, dim=1)
    decay = (dt * A.to(dtype)).exp()[..., None, None]
    state = decay * state + (dt[..., None] * x).unsqueeze(-1) * B.unsqueeze(-2)
    y = torch.einsum("bhpn,bhn->bhp", state, C)
    if D is not None:
        y = y + D.to(dtype)[:, None] * x
    return y, state
