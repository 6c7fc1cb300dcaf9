"""Helpers shared by the chunked kernels: compute precision, padding to whole chunks, the inter-chunk scan."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (half-precision inputs are upcast for the scan)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def pad_time(x: torch.Tensor, chunk: int, dim: int = 1) -> torch.Tensor:
    """Zero-pad dimension ``dim`` (time) up to a multiple of ``chunk``.

    Zero padding is exact for both kernels: a padded step has zero key/value (adds nothing to the state)
    and zero log-decay (multiplies the state by one), so the final state is unchanged.
    """
    pad = (-x.shape[dim]) % chunk
    if pad == 0:
        return x
    spec = [0, 0] * (x.dim() - 1 - dim) + [0, pad]
    return F.pad(x, spec)


def scan_chunk_states(
    chunk_decay: torch.Tensor,
    chunk_update: torch.Tensor,
    initial_state: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the state recurrence across chunks.

    chunk_decay:  [..., N, *decay_shape]  multiplicative decay of the whole chunk, broadcastable to a state
    chunk_update: [..., N, X, Y]          state contributed by each chunk (already decayed to its end)
    initial_state: [..., X, Y] or None

    Returns (states entering each chunk [..., N, X, Y], final state [..., X, Y]).
    A sequential loop over chunks: N = T / chunk is small, and it keeps memory at one state per chunk.
    """
    n_chunks = chunk_update.shape[-3]
    state = initial_state
    if state is None:
        state = torch.zeros_like(chunk_update[..., 0, :, :])
    entering = []
    for n in range(n_chunks):
        entering.append(state)
        state = chunk_decay[..., n, :, :] * state + chunk_update[..., n, :, :]
    return torch.stack(entering, dim=-3), state
