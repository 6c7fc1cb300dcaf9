"""Chunked parallel form of Mamba2's SSM (state-space duality), pure torch.

SSD is GLA with one scalar decay per head: q = C, k = B, v = x * dt, log decay a_t = dt_t * A.
Because the decay is a scalar, the in-chunk decay matrix L[t, s] = exp(b_t - b_s) (b = in-chunk cumulative
log decay) is only [chunk, chunk] per head and chunk, and is formed exactly: the exponent is masked to -inf
above the diagonal before exp, so every evaluated exponent is <= 0 and strong decay cannot overflow.
Across chunks the state [P, N] is carried by ``scan_chunk_states``. Memory is linear in T: the largest
tensors are [B, H, T, chunk] scores and one [P, N] state per head and chunk. B and C stay per group
(G groups, never repeated to H heads); the heads of a group share one C B^T score matrix.
"""
from __future__ import annotations

import torch

from statex.ops.chunking import compute_dtype, pad_time, scan_chunk_states


def chunk_ssd(
    x: torch.Tensor,  # [B, T, H, P]
    dt: torch.Tensor,  # [B, T, H], after softplus and clamping
    A: torch.Tensor,  # [H], negative
    B: torch.Tensor,  # [B, T, G, N]
    C: torch.Tensor,  # [B, T, G, N]
    D: torch.Tensor | None = None,  # [H]
    initial_state: torch.Tensor | None = None,  # [B, H, P, N]
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (y [B, T, H, P] in x's dtype, final state [B, H, P, N] in the compute dtype)."""
    batch, length, heads, headdim = x.shape
    groups, d_state = B.shape[-2:]
    if heads % groups != 0:
        raise ValueError(f"nheads {heads} must be a multiple of ngroups {groups}")
    hpg = heads // groups
    out_dtype = x.dtype
    dtype = compute_dtype(x, dt, B, C)
    chunk_size = min(chunk_size, max(1, length))

    x_in = x.to(dtype)
    xdt = pad_time(x_in * dt.to(dtype).unsqueeze(-1), chunk_size)
    a = pad_time(dt.to(dtype) * A.to(dtype), chunk_size)  # [B, T', H] log decay per step
    B, C = pad_time(B.to(dtype), chunk_size), pad_time(C.to(dtype), chunk_size)
    n_chunks = xdt.shape[1] // chunk_size

    # Layouts: heads as [G, H/G] so that B and C broadcast per group.
    xdt = xdt.view(batch, n_chunks, chunk_size, groups, hpg, headdim).permute(0, 3, 4, 1, 2, 5)  # [B,G,h,N,c,P]
    b = a.view(batch, n_chunks, chunk_size, groups, hpg).permute(0, 3, 4, 1, 2).cumsum(-1)  # [B,G,h,N,c]
    B = B.view(batch, n_chunks, chunk_size, groups, d_state).permute(0, 3, 1, 2, 4)  # [B,G,N,c,Ns]
    C = C.view(batch, n_chunks, chunk_size, groups, d_state).permute(0, 3, 1, 2, 4)
    b_last = b[..., -1:]  # [B,G,h,N,1]

    # Inter-chunk states.
    chunk_update = (xdt * (b_last - b).exp().unsqueeze(-1)).transpose(-1, -2) @ B.unsqueeze(2)  # [B,G,h,N,P,Ns]
    chunk_decay = b_last.exp().unsqueeze(-1)  # [B,G,h,N,1,1]
    if initial_state is not None:
        initial_state = initial_state.to(dtype).view(batch, groups, hpg, headdim, d_state)
    states_in, final_state = scan_chunk_states(chunk_decay, chunk_update, initial_state)
    y = (C.unsqueeze(2) @ states_in.transpose(-1, -2)) * b.exp().unsqueeze(-1)  # [B,G,h,N,c,P]

    # In-chunk: (C B^T) * L, one score matrix per group, decays per head.
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=x.device).tril()
    exponent = (b.unsqueeze(-1) - b.unsqueeze(-2)).masked_fill(~causal, float("-inf"))
    scores = (C @ B.transpose(-1, -2)).unsqueeze(2) * exponent.exp()  # [B,G,h,N,c,c]
    y = y + scores @ xdt

    y = y.permute(0, 3, 4, 1, 2, 5).reshape(batch, -1, heads, headdim)[:, :length]
    if D is not None:
        y = y + D.to(dtype)[:, None] * x_in
    return y.to(out_dtype), final_state.reshape(batch, heads, headdim, d_state)
