"""Triton kernels of the chunked SSD (Mamba2's scan with one scalar decay per head), forward and backward.

The math is ``statex.ops.ssd.chunk`` (the pure-torch reference); ``triton_chunk.py`` chains these kernels into
an autograd function. Notation, per batch b, head h of group g, chunk c of Q = CHUNK steps:

    b_t     in-chunk cumulative log decay (sum of dt * A up to and including t), fp32   [B, T, H]
    lam_c   b at the chunk's last step (the whole chunk's log decay)
    xdt_s   x_s * dt_s                                                                 [B, T, H, P]
    CB      C_t . B_s for t, s in one chunk, once per group (never per head)           [B, NC, G, Q, Q]
    S_c     sum_s exp(lam_c - b_s) xdt_s^T B_s: what chunk c adds to the state (never stored)
    h_c     the state entering chunk c: h_{c+1} = exp(lam_c) h_c + S_c                  [B, NC, H, P, N]
    y_t     exp(b_t) C_t h_c^T + sum_{s <= t} CB[t, s] exp(b_t - b_s) xdt_s

Layouts: every tensor contiguous as above (time padded to whole chunks with dt = 0, which is exact); states are
[P, N] per head ("v-first", like mamba_ssm and the torch path). Block sizes: a program holds one chunk (Q = 64
rows) of one head with its whole head dimension P (a power of two, 16-128) and walks d_state in BLOCK_N columns,
so CB, a chunk's decay matrix and the [Q, P] accumulators stay in registers for any d_state. Dots take bf16
operands (fp32 when the inputs are fp32, then without TF32) and accumulate in fp32; decays are fp32, and so are
the states while the walks over chunks carry them; the stored h_c and dL/dS_c are in the inputs' dtype, since
every later use is a dot operand of that dtype (or one sum of their product, dL/dlam_c).
The exponent of every in-chunk decay is masked to -inf above the diagonal before exp, so strong decay cannot
overflow. No dot takes the transpose of another dot's result in the same kernel: that pattern is what Triton
3.6 miscompiles on Hopper (fla issue 640, why fla refuses chunk_simple_gla backward there: docs/gpu.md);
transposed operands here are always loaded or elementwise products of loaded tensors.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def chunk_cb_kernel(c_ptr, b_ptr, cb_ptr, T, G: tl.constexpr, N: tl.constexpr, Q: tl.constexpr,
                    BLOCK_N: tl.constexpr, IEEE: tl.constexpr):
    """CB[b, c, g] = C_chunk [Q, N] @ B_chunk^T. Grid (NC, batch * G)."""
    chunk, bg = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    batch, group = bg // G, bg % G
    rows = chunk * Q + tl.arange(0, Q)
    base = (batch * T + rows)[:, None] * (G * N) + group * N  # [Q, 1] offsets of (t, g, n=0)
    acc = tl.zeros((Q, Q), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)[None, :]
        c = tl.load(c_ptr + base + cols)
        bm = tl.load(b_ptr + base + cols)
        acc += _dot(c, tl.trans(bm), IEEE)
    out = ((batch * tl.num_programs(0) + chunk) * G + group) * Q * Q
    tl.store(cb_ptr + out + tl.arange(0, Q)[:, None] * Q + tl.arange(0, Q)[None, :], acc)


@triton.jit
def chunk_states_fwd_kernel(x_ptr, w_ptr, b_ptr, lam_ptr, init_ptr, states_ptr, final_ptr, T, NC,
                            H: tl.constexpr, G: tl.constexpr, P: tl.constexpr, N: tl.constexpr, Q: tl.constexpr,
                            BLOCK_N: tl.constexpr, HAS_INIT: tl.constexpr, IEEE: tl.constexpr):
    """The state entering every chunk, h_c, for BLOCK_N columns of one head: a walk over the chunks that keeps
    the fp32 state in registers, stores it (in the inputs' dtype: every later use is a dot operand of that
    dtype) and adds the chunk's S_c = (x * w)^T B with w = exp(lam - b) * dt. One kernel instead of "write
    every S_c, then scan them": S_c never reaches memory. Grid (N / BLOCK_N, batch * H)."""
    nb, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    batch, head = bh // H, bh % H
    group = head // (H // G)
    cols = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    square = tl.arange(0, P)[:, None] * N + cols[None, :]  # [P, BLOCK_N] offsets within one [P, N] state
    if HAS_INIT:
        state = tl.load(init_ptr + bh * P * N + square).to(tl.float32)
    else:
        state = tl.zeros((P, BLOCK_N), dtype=tl.float32)
    for chunk in range(0, NC):
        tl.store(states_ptr + ((batch * NC + chunk) * H + head) * P * N + square, state.to(states_ptr.dtype.element_ty))
        rows = batch * T + chunk * Q + tl.arange(0, Q)
        w = tl.load(w_ptr + rows * H + head)  # [Q] fp32
        u = tl.load(x_ptr + (rows * H + head)[:, None] * P + tl.arange(0, P)[None, :])  # [Q, P]
        v = tl.load(b_ptr + (rows * G + group)[:, None] * N + cols[None, :])  # [Q, BLOCK_N]
        uw = (u.to(tl.float32) * w[:, None]).to(v.dtype)
        decay = tl.exp(tl.load(lam_ptr + (batch * NC + chunk) * H + head))
        state = decay * state + _dot(tl.trans(uw), v, IEEE)
    tl.store(final_ptr + bh * P * N + square, state)


@triton.jit
def chunk_states_bwd_kernel(dy_ptr, b_ptr, c_ptr, lam_ptr, dfinal_ptr, dstates_ptr, dinit_ptr, T, NC,
                            H: tl.constexpr, G: tl.constexpr, P: tl.constexpr, N: tl.constexpr, Q: tl.constexpr,
                            BLOCK_N: tl.constexpr, HAS_DFINAL: tl.constexpr, IEEE: tl.constexpr):
    """The reverse walk: dL/dS_c (the gradient reaching h_{c+1}) for every chunk, stored in the inputs' dtype,
    and dL/dh_0. Chunk c's own outputs add (dy * exp(b))^T C to the gradient of h_c, and h_c reaches h_{c+1}
    through exp(lam_c). Grid (N / BLOCK_N, batch * H)."""
    nb, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    batch, head = bh // H, bh % H
    group = head // (H // G)
    cols = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    square = tl.arange(0, P)[:, None] * N + cols[None, :]
    if HAS_DFINAL:
        grad = tl.load(dfinal_ptr + bh * P * N + square).to(tl.float32)
    else:
        grad = tl.zeros((P, BLOCK_N), dtype=tl.float32)
    for step in range(0, NC):
        chunk = NC - 1 - step
        tl.store(dstates_ptr + ((batch * NC + chunk) * H + head) * P * N + square,
                 grad.to(dstates_ptr.dtype.element_ty))
        rows = batch * T + chunk * Q + tl.arange(0, Q)
        b = tl.load(b_ptr + rows * H + head)
        dy = tl.load(dy_ptr + (rows * H + head)[:, None] * P + tl.arange(0, P)[None, :])
        c = tl.load(c_ptr + (rows * G + group)[:, None] * N + cols[None, :])
        dyw = (dy.to(tl.float32) * tl.exp(b)[:, None]).to(c.dtype)
        decay = tl.exp(tl.load(lam_ptr + (batch * NC + chunk) * H + head))
        grad = decay * grad + _dot(tl.trans(dyw), c, IEEE)
    tl.store(dinit_ptr + bh * P * N + square, grad)
