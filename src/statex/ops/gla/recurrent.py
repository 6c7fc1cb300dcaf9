"""One decoding step of GLA: the recurrence of naive.py for a single token."""
from __future__ import annotations

import torch


def recurrent_gla_step(
    q: torch.Tensor,  # [B, H, K]
    k: torch.Tensor,  # [B, H, K]
    v: torch.Tensor,  # [B, H, V]
    g: torch.Tensor,  # [B, H, K] log decay
    state: torch.Tensor,  # [B, H, K, V], kept in fp32 (or fp64)
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (o [B, H, V] in v's dtype, new state in the state's dtype)."""
    dtype = state.dtype
    q, k, v, g = (x.to(dtype) for x in (q, k, v, g))
    state = g.exp().unsqueeze(-1) * state + k.unsqueeze(-1) * v.unsqueeze(-2)
    out = torch.einsum("bhk,bhkv->bhv", q * scale, state)
    return out, state
