"""A GLA head of key dim K and value dim V as (K/Kb) x (V/Vb) independent sub-heads of Kb x Vb: exact.

GLA's decay acts per key channel, so the rows of the state S [K, V] evolve independently, and so do its columns.
Sub-head (i, j) reads key block i and value block j and keeps the state block S[i, j]; value block j of the head's
output is the sum over i of the sub-heads' outputs, with the whole head's scale. This lets kernels tuned for heads
up to 256 x 512 serve StateX's merged heads (GLA-1.3B's 4 heads merged: 1024 x 2048) and Mamba2's SSD at a large
d_state (``statex.ops.ssd.via_gla``); the cost is the sum of the sub-heads' costs, the expected growth in state
work.

A GLA kernel here is any function (q, k, v, g [B, T, H, K|V], scale, initial_state, state_v_first)
-> (o [B, T, H, V], final_state), states [B, H, K, V] or, with state_v_first, [B, H, V, K] (fla's layout).
"""
from __future__ import annotations

from typing import Callable

import torch

from statex.ops.gla.chunk import chunk_gla
from statex.ops.gla.recurrent import recurrent_gla_step

GLAKernel = Callable[..., tuple[torch.Tensor, torch.Tensor]]
MIN_BLOCK = 16  # smaller blocks would waste the kernels' matrix units; a head that needs them is refused


def block_size(dim: int, limit: int) -> int | None:
    """The largest block size <= limit that divides dim (dim itself when it fits); None if only tiny ones do."""
    if dim <= limit:
        return dim
    for size in range(limit, min(MIN_BLOCK, limit) - 1, -1):
        if dim % size == 0:
            return size
    return None


def split_heads_gla(kernel: GLAKernel, q, k, v, g, scale: float, initial_state=None, state_v_first: bool = False,
                    max_key_block: int = 256, max_value_block: int = 512):
    """Run ``kernel`` on heads of key dim K and value dim V as sub-heads of at most max_key_block x
    max_value_block (see the module docstring). Shapes in and out are those of the unsplit call."""
    batch, length, heads, key_dim = q.shape
    value_dim = v.shape[-1]
    kb, vb = block_size(key_dim, max_key_block), block_size(value_dim, max_value_block)
    if kb is None or vb is None:
        raise ValueError(f"head {key_dim} x {value_dim} has no block size between {MIN_BLOCK} and "
                         f"{max_key_block} x {max_value_block}")
    a, b = key_dim // kb, value_dim // vb
    if a == 1 and b == 1:
        return kernel(q, k, v, g, scale, initial_state, state_v_first)

    def keys(x):  # [B, T, H, a*kb] -> [B, T, H*a*b, kb]: sub-head (h, i, j) reads key block i
        return x.view(batch, length, heads, a, 1, kb).expand(-1, -1, -1, -1, b, -1).reshape(
            batch, length, heads * a * b, kb)

    values = v.view(batch, length, heads, 1, b, vb).expand(-1, -1, -1, a, -1, -1).reshape(
        batch, length, heads * a * b, vb)  # sub-head (h, i, j) reads value block j
    h0 = None
    if initial_state is not None:
        if state_v_first:  # [B, H, V, K] -> [B, H, a, b, vb, kb]
            h0 = initial_state.reshape(batch, heads, b, vb, a, kb).permute(0, 1, 4, 2, 3, 5)
        else:  # [B, H, K, V] -> [B, H, a, b, kb, vb]
            h0 = initial_state.reshape(batch, heads, a, kb, b, vb).permute(0, 1, 2, 4, 3, 5)
        h0 = h0.reshape(batch, heads * a * b, *h0.shape[-2:])
    o, final = kernel(keys(q), keys(k), values, keys(g), scale, h0, state_v_first)
    o = o.view(batch, length, heads, a, b, vb).sum(dim=3).reshape(batch, length, heads, value_dim)
    if final is not None:
        final = final.view(batch, heads, a, b, *final.shape[-2:])
        if state_v_first:  # [B, H, a, b, vb, kb] -> [B, H, b, vb, a, kb]
            final = final.permute(0, 1, 3, 4, 2, 5).reshape(batch, heads, value_dim, key_dim)
        else:  # [B, H, a, b, kb, vb] -> [B, H, a, kb, b, vb]
            final = final.permute(0, 1, 2, 4, 3, 5).reshape(batch, heads, key_dim, value_dim)
    return o, final


def torch_gla_kernel(q, k, v, g, scale, initial_state, state_v_first):
    """The pure-torch chunked GLA (``chunk_gla``) behind the GLA-kernel signature: the reference the fast kernels
    are tested against, and what the CPU tests of the split run."""
    if initial_state is not None and state_v_first:
        initial_state = initial_state.transpose(-1, -2)
    o, final = chunk_gla(q, k, v, g, scale=scale, initial_state=initial_state)
    return o, final.transpose(-1, -2) if state_v_first else final


def torch_gla_step_kernel(q, k, v, g, scale, initial_state, state_v_first):
    """The pure-torch one-token step (``recurrent_gla_step``) behind the GLA-kernel signature ([B, 1, H, D]
    inputs, an initial state required)."""
    state = initial_state.transpose(-1, -2) if state_v_first else initial_state
    o, new = recurrent_gla_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], state, scale)
    return o.unsqueeze(1), new.transpose(-1, -2) if state_v_first else new
