"""Mamba2's SSD as GLA with one decay per head (Dao and Gu, "Transformers are SSMs", 2024, section 7): q = C,
k = B (groups repeated to heads), v = x * dt, log decay dt * A on every d_state channel, scale 1. The SSD state
[B, H, P, N] is a GLA kernel's v-first layout. Any GLA kernel runs it, split into sub-heads as
``statex.ops.gla.split`` does for large d_state."""
from __future__ import annotations

import torch

from statex.ops.gla.split import GLAKernel, split_heads_gla


def ssd_as_gla(kernel: GLAKernel, x, dt, A, B, C, D=None, initial_state=None, **blocks):
    """Same arguments and results as ``statex.ops.chunk_ssd``; ``blocks``: the sub-head limits of
    ``split_heads_gla``."""
    heads, groups, d_state = x.shape[2], B.shape[2], B.shape[3]
    per_group = heads // groups
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    q = C.repeat_interleave(per_group, dim=2).to(x.dtype)
    k = B.repeat_interleave(per_group, dim=2).to(x.dtype)
    dt = dt.to(work)
    v = (x.to(work) * dt.unsqueeze(-1)).to(x.dtype)
    g = (dt * A.to(work)).unsqueeze(-1).expand(*dt.shape, d_state)
    y, final = split_heads_gla(kernel, q, k, v, g, 1.0, initial_state, state_v_first=True, **blocks)
    if D is not None:
        y = (y.to(work) + D.to(work)[:, None] * x.to(work)).to(x.dtype)
    return y, final
