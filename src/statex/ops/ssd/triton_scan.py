"""Triton kernels of the chunked SSD's output ("chunk scan"), forward and backward; notation and layouts as in
``triton_kernels.py``. One program holds one chunk: forward per head, backward per group, walking the group's
heads so that CB is read once and its gradient dCB is summed over the heads in registers, never stored per
head. Offsets are 64-bit (a layer's states at 64K tokens pass 2^31 elements).
"""
from __future__ import annotations

import triton
import triton.language as tl

from statex.ops.ssd.triton_kernels import _dot


@triton.jit
def _in_chunk_decay(b, Q: tl.constexpr):
    """exp(b_t - b_s) for s <= t, else 0; [Q, Q] fp32 (the exponent is masked before exp: never above 0)."""
    causal = tl.arange(0, Q)[:, None] >= tl.arange(0, Q)[None, :]
    return tl.exp(tl.where(causal, b[:, None] - b[None, :], float("-inf")))


@triton.jit
def _load_head(x_ptr, dt_ptr, b_ptr, lam_ptr, dy_ptr, rows, batch, chunk, head, NC, H: tl.constexpr,
               P: tl.constexpr):
    """What the backward kernels read of one head in one chunk: b, dt [Q], lam, x, dy [Q, P], and x's offsets."""
    b = tl.load(b_ptr + rows * H + head)
    dt = tl.load(dt_ptr + rows * H + head)
    lam = tl.load(lam_ptr + (batch * NC + chunk) * H + head)
    x_at = (rows * H + head)[:, None] * P + tl.arange(0, P)[None, :]
    return b, dt, lam, tl.load(x_ptr + x_at), tl.load(dy_ptr + x_at), x_at


@triton.jit
def scan_fwd_kernel(x_ptr, dt_ptr, b_ptr, c_ptr, cb_ptr, states_ptr, d_ptr, y_ptr, T, NC, H: tl.constexpr,
                    G: tl.constexpr, P: tl.constexpr, N: tl.constexpr, Q: tl.constexpr, BLOCK_N: tl.constexpr,
                    HAS_D: tl.constexpr, IEEE: tl.constexpr):
    """y of one chunk of one head: exp(b_t) C_t h_c^T + (CB * decay * dt_s) @ x (+ D x). Grid (NC, batch * H)."""
    chunk, bh = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    batch, head = bh // H, bh % H
    group = head // (H // G)
    rows = batch * T + chunk * Q + tl.arange(0, Q)
    b = tl.load(b_ptr + rows * H + head)
    dt = tl.load(dt_ptr + rows * H + head)
    x_at = (rows * H + head)[:, None] * P + tl.arange(0, P)[None, :]
    x = tl.load(x_ptr + x_at)  # [Q, P]
    square = tl.arange(0, Q)[:, None] * Q + tl.arange(0, Q)[None, :]
    cb = tl.load(cb_ptr + ((batch * NC + chunk) * G + group) * Q * Q + square)
    mixing = (cb * _in_chunk_decay(b, Q) * dt[None, :]).to(x.dtype)
    acc = _dot(mixing, x, IEEE)
    state_at = ((batch * NC + chunk) * H + head) * P * N
    inter = tl.zeros((Q, P), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        c = tl.load(c_ptr + (rows * G + group)[:, None] * N + cols[None, :])  # [Q, BLOCK_N]
        h = tl.load(states_ptr + state_at + tl.arange(0, P)[None, :] * N + cols[:, None])  # h_c^T [BLOCK_N, P]
        inter += _dot(c, h.to(c.dtype), IEEE)
    acc += inter * tl.exp(b)[:, None]
    if HAS_D:
        acc += tl.load(d_ptr + head) * x.to(tl.float32)
    tl.store(y_ptr + x_at, acc.to(x.dtype))


@triton.jit
def scan_bwd_x_kernel(x_ptr, dt_ptr, b_ptr, lam_ptr, bm_ptr, c_ptr, cb_ptr, states_ptr, dstates_ptr, dy_ptr,
                      d_ptr, dx_ptr, ddt_ptr, db_ptr, dlam_ptr, dd_ptr, dcb_ptr, T, NC, H: tl.constexpr,
                      G: tl.constexpr, P: tl.constexpr, N: tl.constexpr, Q: tl.constexpr, BLOCK_N: tl.constexpr,
                      HAS_D: tl.constexpr, IEEE: tl.constexpr):
    """Per chunk and group, for each of its heads: dx, the dt and b gradients through x * dt, the in-chunk
    decays, the chunk state and the inter-chunk output; dL/dlam_c, through the chunk state S_c and through the
    decay exp(lam_c) h_c; this chunk's part of dD; and dCB summed over the heads. dstates: dL/dS_c
    (chunk_states_bwd_kernel's result). Grid (NC, batch * G)."""
    chunk, bg = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    batch, group = bg // G, bg % G
    HPG: tl.constexpr = H // G
    rows = batch * T + chunk * Q + tl.arange(0, Q)
    square = tl.arange(0, Q)[:, None] * Q + tl.arange(0, Q)[None, :]
    cb = tl.load(cb_ptr + ((batch * NC + chunk) * G + group) * Q * Q + square)
    dcb = tl.zeros((Q, Q), dtype=tl.float32)
    for k in range(0, HPG):
        head = group * HPG + k
        b, dt, lam, x, dy, x_at = _load_head(x_ptr, dt_ptr, b_ptr, lam_ptr, dy_ptr, rows, batch, chunk, head, NC, H,
                                             P)
        decay = _in_chunk_decay(b, Q)
        xdt = x.to(tl.float32) * dt[:, None]
        d_mixing = _dot(dy, tl.trans(xdt.to(dy.dtype)), IEEE)  # dL/d(CB * decay)[t, s] = dy_t . xdt_s
        mixing = cb * decay
        d_xdt = _dot(tl.trans(mixing.to(dy.dtype)), dy, IEEE)  # [Q, P]
        from_state = tl.zeros((Q, P), dtype=tl.float32)  # B_s dS_c^T
        inter = tl.zeros((Q, P), dtype=tl.float32)  # C_t h_c^T
        through_decay = 0.0  # sum of dS_c * h_c: dL/dlam_c through the decay exp(lam_c) h_c, / exp(lam_c)
        state_at = ((batch * NC + chunk) * H + head) * P * N
        for n0 in range(0, N, BLOCK_N):
            cols = n0 + tl.arange(0, BLOCK_N)
            bc_at = (rows * G + group)[:, None] * N + cols[None, :]
            bm = tl.load(bm_ptr + bc_at)
            c = tl.load(c_ptr + bc_at)
            transposed = state_at + tl.arange(0, P)[None, :] * N + cols[:, None]  # [BLOCK_N, P]
            ds = tl.load(dstates_ptr + transposed)
            h = tl.load(states_ptr + transposed)
            from_state += _dot(bm, ds.to(bm.dtype), IEEE)
            inter += _dot(c, h.to(c.dtype), IEEE)
            through_decay += tl.sum(ds.to(tl.float32) * h.to(tl.float32))
        from_state = from_state * tl.exp(lam - b)[:, None]
        d_xdt += from_state
        dx = d_xdt * dt[:, None]
        if HAS_D:
            dx += tl.load(d_ptr + head) * dy.to(tl.float32)
            tl.store(dd_ptr + (batch * NC + chunk) * H + head, tl.sum(dy.to(tl.float32) * x.to(tl.float32)))
        tl.store(dx_ptr + x_at, dx.to(x.dtype))
        tl.store(ddt_ptr + rows * H + head, tl.sum(d_xdt * x.to(tl.float32), axis=1))
        through_state = tl.sum(xdt * from_state, axis=1)  # dL/d exp(lam - b_s) * exp(lam - b_s)
        weighted = d_mixing * mixing
        db = tl.sum(weighted, axis=1) - tl.sum(weighted, axis=0) - through_state
        db += tl.exp(b) * tl.sum(dy.to(tl.float32) * inter, axis=1)
        tl.store(db_ptr + rows * H + head, db)
        through_pass = through_decay * tl.exp(lam)
        tl.store(dlam_ptr + (batch * NC + chunk) * H + head, tl.sum(through_state, axis=0) + through_pass)
        dcb += d_mixing * decay
    tl.store(dcb_ptr + ((batch * NC + chunk) * G + group) * Q * Q + square, dcb)


@triton.jit
def scan_bwd_bc_kernel(x_ptr, dt_ptr, b_ptr, lam_ptr, bm_ptr, c_ptr, dcb_ptr, states_ptr, dstates_ptr, dy_ptr,
                       dbm_ptr, dc_ptr, T, NC, H: tl.constexpr, G: tl.constexpr, P: tl.constexpr,
                       N: tl.constexpr, Q: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr):
    """dB and dC of one chunk, group and BLOCK_N columns of d_state (fp32): through CB (dCB, once per group),
    and, summed over the group's heads, dC_t += exp(b_t) dy_t h_c and dB_s += exp(lam - b_s) xdt_s dS_c.
    Grid (NC, batch * G, N / BLOCK_N)."""
    chunk, bg, nb = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64), tl.program_id(2)
    batch, group = bg // G, bg % G
    HPG: tl.constexpr = H // G
    rows = batch * T + chunk * Q + tl.arange(0, Q)
    cols = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    bc_at = (rows * G + group)[:, None] * N + cols[None, :]
    bm = tl.load(bm_ptr + bc_at)
    c = tl.load(c_ptr + bc_at)
    square = tl.arange(0, Q)[:, None] * Q + tl.arange(0, Q)[None, :]
    dcb = tl.load(dcb_ptr + ((batch * NC + chunk) * G + group) * Q * Q + square)
    dc = _dot(dcb.to(bm.dtype), bm, IEEE)
    dbm = _dot(tl.trans(dcb).to(c.dtype), c, IEEE)
    for k in range(0, HPG):
        head = group * HPG + k
        b, dt, lam, x, dy, x_at = _load_head(x_ptr, dt_ptr, b_ptr, lam_ptr, dy_ptr, rows, batch, chunk, head, NC, H,
                                             P)
        state_at = ((batch * NC + chunk) * H + head) * P * N + tl.arange(0, P)[:, None] * N + cols[None, :]
        h = tl.load(states_ptr + state_at)  # [P, BLOCK_N]
        ds = tl.load(dstates_ptr + state_at)
        dc += _dot(dy, h.to(dy.dtype), IEEE) * tl.exp(b)[:, None]
        xdt = (x.to(tl.float32) * (dt * tl.exp(lam - b))[:, None]).to(x.dtype)
        dbm += _dot(xdt, ds.to(x.dtype), IEEE)
    tl.store(dbm_ptr + bc_at, dbm)
    tl.store(dc_ptr + bc_at, dc)
