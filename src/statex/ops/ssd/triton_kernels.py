"""Triton kernels of the chunked SSD (Mamba2's scan with one scalar decay per head), forward and backward.

The math is ``statex.ops.ssd.chunk`` (the pure-torch reference); ``triton_chunk.py`` chains these kernels into
an autograd function. Notation, per batch b, head h of group g, chunk c of Q = CHUNK steps:

    b_t     in-chunk cumulative log decay (sum of dt * A up to and including t), fp32   [B, T, H]
    lam_c   b at the chunk's last step (the whole chunk's log decay)
    xdt_s   x_s * dt_s                                                                 [B, T, H, P]
    CB      C_t . B_s for t, s in one chunk, once per group (never per head)           [B, NC, G, Q, Q]
    S_c     sum_s exp(lam_c - b_s) xdt_s^T B_s: what chunk c adds to the state          [B, NC, H, P, N]
    h_c     the state entering chunk c: h_{c+1} = exp(lam_c) h_c + S_c
    y_t     exp(b_t) C_t h_c^T + sum_{s <= t} CB[t, s] exp(b_t - b_s) xdt_s

Layouts: every tensor contiguous as above (time padded to whole chunks with dt = 0, which is exact); states are
[P, N] per head ("v-first", like mamba_ssm and the torch path). Block sizes: a program holds one chunk (Q = 64
rows) of one head with its whole head dimension P (a power of two, 16-128) and walks d_state in BLOCK_N columns,
so CB, a chunk's decay matrix and the [Q, P] accumulators stay in registers for any d_state. Dots take bf16
operands (fp32 when the inputs are fp32, then without TF32) and accumulate in fp32; decays and states are fp32.
The exponent of every in-chunk decay is masked to -inf above the diagonal before exp, so strong decay cannot
overflow. No dot takes the transpose of another dot's result in the same kernel: that pattern is what Triton
3.6 miscompiles on Hopper (fla issue 640, why fla refuses chunk_simple_gla backward there: issue
[ssd-kernel]); transposed operands here are always loaded or elementwise products of loaded tensors.
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
def chunk_outer_kernel(u_ptr, w_ptr, v_ptr, out_ptr, T, H: tl.constexpr, G: tl.constexpr, P: tl.constexpr,
                       N: tl.constexpr, Q: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr):
    """out[b, c, h] = sum_{s in chunk c} w[b, s, h] u[b, s, h]^T v[b, s, g] ([P, N] per head, fp32).
    Chunk states: u = x * dt, w = exp(lam - b), v = B. Their gradient: u = dy, w = exp(b), v = C.
    Grid (NC, batch * H, N / BLOCK_N)."""
    chunk, bh, nb = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64), tl.program_id(2)
    batch, head = bh // H, bh % H
    group = head // (H // G)
    rows = batch * T + chunk * Q + tl.arange(0, Q)  # [Q]
    w = tl.load(w_ptr + rows * H + head)  # [Q] fp32
    u = tl.load(u_ptr + (rows * H + head)[:, None] * P + tl.arange(0, P)[None, :])  # [Q, P]
    cols = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    v = tl.load(v_ptr + (rows * G + group)[:, None] * N + cols[None, :])  # [Q, BLOCK_N]
    uw = (u.to(tl.float32) * w[:, None]).to(v.dtype)
    acc = _dot(tl.trans(uw), v, IEEE)  # [P, BLOCK_N]
    out = ((batch * tl.num_programs(0) + chunk) * H + head) * P * N
    tl.store(out_ptr + out + tl.arange(0, P)[:, None] * N + cols[None, :], acc)


@triton.jit
def state_pass_fwd_kernel(states_ptr, lam_ptr, init_ptr, final_ptr, NC, H: tl.constexpr, PN: tl.constexpr,
                          HAS_INIT: tl.constexpr, BLOCK: tl.constexpr):
    """In place: states[b, c, h] holds S_c on entry and h_c (the state entering chunk c) on return; final is
    h_NC. lam [B, NC, H]. Grid (batch * H, PN / BLOCK)."""
    bh, blk = tl.program_id(0).to(tl.int64), tl.program_id(1)
    batch, head = bh // H, bh % H
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < PN
    if HAS_INIT:
        state = tl.load(init_ptr + bh * PN + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        state = tl.zeros((BLOCK,), dtype=tl.float32)
    for chunk in range(0, NC):
        at = ((batch * NC + chunk) * H + head) * PN + offs
        update = tl.load(states_ptr + at, mask=mask, other=0.0)
        tl.store(states_ptr + at, state, mask=mask)
        decay = tl.exp(tl.load(lam_ptr + (batch * NC + chunk) * H + head))
        state = decay * state + update
    tl.store(final_ptr + bh * PN + offs, state, mask=mask)


@triton.jit
def state_pass_bwd_kernel(grads_ptr, states_ptr, lam_ptr, dfinal_ptr, dinit_ptr, dlam_ptr, NC, H: tl.constexpr,
                          PN: tl.constexpr, HAS_DFINAL: tl.constexpr, BLOCK: tl.constexpr):
    """In place: grads[b, c, h] holds dL/dh_c from chunk c's own outputs on entry and dL/dS_c (= the gradient
    reaching h_{c+1}) on return. states: the forward's h_c. dlam[b, c, h, blk] receives this block's part of
    dL/dlam_c through the decay exp(lam_c) h_c; dinit is dL/dh_0. Grid (batch * H, PN / BLOCK)."""
    bh, blk = tl.program_id(0).to(tl.int64), tl.program_id(1)
    batch, head = bh // H, bh % H
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < PN
    if HAS_DFINAL:
        grad = tl.load(dfinal_ptr + bh * PN + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        grad = tl.zeros((BLOCK,), dtype=tl.float32)
    blocks = tl.num_programs(1)
    for step in range(0, NC):
        chunk = NC - 1 - step
        at = ((batch * NC + chunk) * H + head) * PN + offs
        local = tl.load(grads_ptr + at, mask=mask, other=0.0)
        state = tl.load(states_ptr + at, mask=mask, other=0.0)
        decay = tl.exp(tl.load(lam_ptr + (batch * NC + chunk) * H + head))
        tl.store(dlam_ptr + ((batch * NC + chunk) * H + head) * blocks + blk, tl.sum(grad * state) * decay)
        tl.store(grads_ptr + at, grad, mask=mask)
        grad = local + decay * grad
    tl.store(dinit_ptr + bh * PN + offs, grad, mask=mask)
