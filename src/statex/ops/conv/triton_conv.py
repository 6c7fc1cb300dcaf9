"""silu(causal depthwise conv1d(x) + bias) over [B, T, channels] in Triton, forward and backward.

    y_t = silu(pre_t),  pre_t = bias + sum_k w[k] x_{t - (W-1) + k}   (x_s = 0 for s < 0; W = kernel size)

Why a kernel: the torch path is W shifted multiply-adds, a bias add and a SiLU, each a full pass over the
[B, T, d_inner + 2 * ngroups * d_state] activations, and twice that in the backward; at Mamba2-1.3B's shape they
were about a sixth of a layer's time on the H200 (docs/benchmarks.md). Here one pass reads x and writes y, and
the backward reads x and dy and writes dx: pre is recomputed, not stored.

Blocks: a program holds BLOCK_T time steps x BLOCK_D channels of one sequence, fp32 arithmetic on inputs of any
float dtype. The backward needs g_s = dy_s silu'(pre_s) at s = t .. t + W - 1 for dx_t = sum_k w[k] g_{t+W-1-k},
so it recomputes pre at those W shifts (W x W loads, served by the cache); the weight and bias gradients are
summed per program into [B, T / BLOCK_T, channels, W] partials (deterministic, no atomics), then in torch.
Only the stateless call runs here (training, and a prefill from an empty state); a carried state runs the torch
path, which builds the new state in either case.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_T = 64
BLOCK_D = 64


@triton.jit
def _pre_activation(x_ptr, w_ptr, bias_ptr, batch, t, d, T, D, W: tl.constexpr, HAS_BIAS: tl.constexpr,
                    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """pre at time steps t [BLOCK_T] and channels d [BLOCK_D], fp32; zero where t is outside [0, T)."""
    inside = (t >= 0) & (t < T)
    acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    for k in tl.static_range(W):
        src = t - (W - 1) + k
        mask = ((src >= 0) & (src < T))[:, None] & (d < D)[None, :]
        x = tl.load(x_ptr + (batch * T + src)[:, None] * D + d[None, :], mask=mask, other=0.0)
        acc += x.to(tl.float32) * tl.load(w_ptr + d * W + k, mask=d < D, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + d, mask=d < D, other=0.0).to(tl.float32)[None, :]
    return tl.where(inside[:, None], acc, 0.0)


@triton.jit
def conv_silu_fwd_kernel(x_ptr, w_ptr, bias_ptr, y_ptr, T, D, W: tl.constexpr, HAS_BIAS: tl.constexpr,
                         BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """Grid (T / BLOCK_T, channels / BLOCK_D, batch)."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    batch = tl.program_id(2).to(tl.int64)
    pre = _pre_activation(x_ptr, w_ptr, bias_ptr, batch, t, d, T, D, W, HAS_BIAS, BLOCK_T, BLOCK_D)
    mask = (t < T)[:, None] & (d < D)[None, :]
    tl.store(y_ptr + (batch * T + t)[:, None] * D + d[None, :], (pre * tl.sigmoid(pre)).to(y_ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def _grad_pre(x_ptr, w_ptr, bias_ptr, dy_ptr, batch, t, d, T, D, W: tl.constexpr, HAS_BIAS: tl.constexpr,
              BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """dL/dpre = dy silu'(pre) at time steps t (zero outside [0, T))."""
    pre = _pre_activation(x_ptr, w_ptr, bias_ptr, batch, t, d, T, D, W, HAS_BIAS, BLOCK_T, BLOCK_D)
    mask = ((t >= 0) & (t < T))[:, None] & (d < D)[None, :]
    dy = tl.load(dy_ptr + (batch * T + t)[:, None] * D + d[None, :], mask=mask, other=0.0).to(tl.float32)
    sig = tl.sigmoid(pre)
    return dy * sig * (1 + pre * (1 - sig))


@triton.jit
def conv_silu_bwd_kernel(x_ptr, w_ptr, bias_ptr, dy_ptr, dx_ptr, dw_ptr, dbias_ptr, T, D, W: tl.constexpr,
                         HAS_BIAS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """dx of BLOCK_T x BLOCK_D, and this block's parts of dw [.., D, W] and dbias [.., D]. Grid as the forward's."""
    tb = tl.program_id(0)
    t = tb * BLOCK_T + tl.arange(0, BLOCK_T)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    batch = tl.program_id(2).to(tl.int64)
    part = batch * tl.num_programs(0) + tb  # this program's row of the partial sums
    g = _grad_pre(x_ptr, w_ptr, bias_ptr, dy_ptr, batch, t, d, T, D, W, HAS_BIAS, BLOCK_T, BLOCK_D)
    dx = g * tl.load(w_ptr + d * W + (W - 1), mask=d < D, other=0.0).to(tl.float32)[None, :]
    for j in tl.static_range(1, W):  # x_t reaches pre_{t+j} through w[W-1-j]
        shifted = _grad_pre(x_ptr, w_ptr, bias_ptr, dy_ptr, batch, t + j, d, T, D, W, HAS_BIAS, BLOCK_T,
                            BLOCK_D)
        dx += shifted * tl.load(w_ptr + d * W + (W - 1 - j), mask=d < D, other=0.0).to(tl.float32)[None, :]
    mask = (t < T)[:, None] & (d < D)[None, :]
    tl.store(dx_ptr + (batch * T + t)[:, None] * D + d[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)
    for k in tl.static_range(W):
        src = t - (W - 1) + k
        src_mask = ((src >= 0) & (src < T))[:, None] & (d < D)[None, :]
        x = tl.load(x_ptr + (batch * T + src)[:, None] * D + d[None, :], mask=src_mask, other=0.0)
        tl.store(dw_ptr + (part * D + d) * W + k, tl.sum(g * x.to(tl.float32), axis=0), mask=d < D)
    if HAS_BIAS:
        tl.store(dbias_ptr + part * D + d, tl.sum(g, axis=0), mask=d < D)


def _grid(x):
    batch, length, channels = x.shape
    return (triton.cdiv(length, BLOCK_T), triton.cdiv(channels, BLOCK_D), batch)


class _ConvSilu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        y = torch.empty_like(x)
        conv_silu_fwd_kernel[_grid(x)](x, weight, y if bias is None else bias, y, x.shape[1], x.shape[2],
                                       weight.shape[1], bias is not None, BLOCK_T, BLOCK_D)
        ctx.save_for_backward(x, weight, bias)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias = ctx.saved_tensors
        grid = _grid(x)
        parts = grid[0] * grid[2]
        dx = torch.empty_like(x)
        dw = torch.empty(parts, x.shape[2], weight.shape[1], dtype=torch.float32, device=x.device)
        dbias = None if bias is None else torch.empty(parts, x.shape[2], dtype=torch.float32, device=x.device)
        conv_silu_bwd_kernel[grid](x, weight, dx if bias is None else bias, dy.contiguous(), dx, dw,
                                   dw if dbias is None else dbias, x.shape[1], x.shape[2], weight.shape[1],
                                   bias is not None, BLOCK_T, BLOCK_D)
        return dx, dw.sum(0).to(weight.dtype), None if dbias is None else dbias.sum(0).to(bias.dtype)


def conv_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [B, T, channels], weight [channels, W], bias [channels] or None -> silu(causal conv(x) + bias), x's
    dtype, from a zero state."""
    return _ConvSilu.apply(x.contiguous(), weight.contiguous(), None if bias is None else bias.contiguous())
