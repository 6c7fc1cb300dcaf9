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
    # unbind (not per-chunk indexing): its backward is one stack, where indexing would allocate and
    # accumulate a full-size gradient per chunk, which is quadratic in the number of chunks.
    decays = chunk_decay.unbind(dim=-3)
    updates = chunk_update.unbind(dim=-3)
    state = initial_state
    if state is None:
        state = torch.zeros_like(updates[0])
    entering = []
    for decay, update in zip(decays, updates):
        entering.append(state)
        state = torch.addcmul(update, decay, state)
    return torch.stack(entering, dim=-3), state
