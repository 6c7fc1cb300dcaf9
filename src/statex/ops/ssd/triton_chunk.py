"""Mamba2's chunked SSD in the project's own Triton kernels (``triton_kernels.py``, ``triton_scan.py``): forward
and backward, gradients for x, dt, A, B, C and the initial state; D is added here in torch.

Same arguments and results as ``statex.ops.chunk_ssd`` (the pure-torch reference these kernels are tested
against), on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (how the CPU tests run them). B and C
stay per group: C . B^T of a chunk is computed once per group, and its gradient is summed over the group's heads
inside one program. Supported shapes (``supports``): head dimension P and d_state N powers of two from 16 to 128
(P) / 16 upward (N); anything else runs elsewhere (``statex.runtime.dispatch``).

Forward, three launches: CB per group; the walk over chunks that stores the state h_c entering each chunk (and
returns the final state); the output, with D x. Saved for the backward: CB [B, NC, G, Q, Q] (fp32) and the
states h_c [B, NC, H, P, N] (in x's dtype). Backward, three launches: the reverse walk that stores dL/dS_c (and
returns the initial state's gradient); dx, dD, the dt and decay gradients per head and dCB per group; dB and
dC; then in torch the reverse in-chunk cumsum that turns the log-decay gradient into dt's and A's.
"""
from __future__ import annotations

import torch

CHUNK = 64  # Q: rows of one program
BLOCK_N = 64  # d_state columns per step (the whole of N when N < 64)
# num_warps per kernel, chosen on the H200 by bench/ssd_kernels.py (docs/benchmarks.md)
WARPS = {"cb": 4, "states": 4, "scan": 4, "scan_bwd_x": 8, "scan_bwd_bc": 4}


def supports(x: torch.Tensor, B: torch.Tensor) -> bool:
    headdim, d_state = x.shape[-1], B.shape[-1]
    power = lambda n: n >= 16 and n & (n - 1) == 0  # noqa: E731
    return power(headdim) and headdim <= 128 and power(d_state) and x.shape[2] % B.shape[2] == 0


def _padded(t: torch.Tensor, length: int) -> torch.Tensor:
    extra = length - t.shape[1]
    if extra:
        t = torch.cat([t, t.new_zeros(t.shape[0], extra, *t.shape[2:])], dim=1)
    return t.contiguous()


def _launch_shapes(x, B):
    batch, length, heads, headdim = x.shape
    groups, d_state = B.shape[-2:]
    n_chunks = -(-length // CHUNK)
    return batch, length, heads, headdim, groups, d_state, n_chunks, min(BLOCK_N, d_state)


class _ChunkSSD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, initial_state):
        from statex.ops.ssd import triton_kernels as k
        from statex.ops.ssd import triton_scan as s

        batch, length, heads, headdim, groups, d_state, n_chunks, block_n = _launch_shapes(x, B)
        padded = n_chunks * CHUNK
        ieee = x.dtype == torch.float32
        x_p, B_p, C_p = _padded(x, padded), _padded(B.to(x.dtype), padded), _padded(C.to(x.dtype), padded)
        dt_p = _padded(dt.float(), padded)  # padded steps: dt = 0, so they neither decay nor add to the state
        log_decay = (dt_p * A.float()).view(batch, n_chunks, CHUNK, heads).cumsum(2)
        lam = log_decay[:, :, -1].contiguous()  # [B, NC, H]
        weight = (torch.exp(lam.unsqueeze(2) - log_decay).view(batch, padded, heads) * dt_p).contiguous()
        log_decay = log_decay.view(batch, padded, heads).contiguous()

        cb = x.new_empty(batch, n_chunks, groups, CHUNK, CHUNK, dtype=torch.float32)
        k.chunk_cb_kernel[(n_chunks, batch * groups)](C_p, B_p, cb, padded, groups, d_state, CHUNK, block_n, ieee,
                                                      num_warps=WARPS["cb"])
        states = x.new_empty(batch, n_chunks, heads, headdim, d_state)  # h_c, in x's dtype (dot operands only)
        final = x.new_empty(batch, heads, headdim, d_state, dtype=torch.float32)
        h0 = None if initial_state is None else initial_state.float().contiguous()
        k.chunk_states_fwd_kernel[(d_state // block_n, batch * heads)](
            x_p, weight, B_p, lam, final if h0 is None else h0, states, final, padded, n_chunks, heads, groups,
            headdim, d_state, CHUNK, block_n, h0 is not None, ieee, num_warps=WARPS["states"])
        y = torch.empty_like(x_p)
        D_f = None if D is None else D.float().contiguous()
        s.scan_fwd_kernel[(n_chunks, batch * heads)](
            x_p, dt_p, log_decay, C_p, cb, states, y if D_f is None else D_f, y, padded, n_chunks, heads, groups,
            headdim, d_state, CHUNK, block_n, D_f is not None, ieee, num_warps=WARPS["scan"])
        ctx.save_for_backward(x_p, dt_p, A, B_p, C_p, D_f, log_decay, lam, cb, states)
        ctx.meta = (length, initial_state is not None, dt.dtype, B.dtype, C.dtype, None if D is None else D.dtype)
        return y[:, :length], final

    @staticmethod
    def backward(ctx, dy, dfinal):
        from statex.ops.ssd import triton_kernels as k
        from statex.ops.ssd import triton_scan as s

        x_p, dt_p, A, B_p, C_p, D_f, log_decay, lam, cb, states = ctx.saved_tensors
        length, has_initial, dt_dtype, b_dtype, c_dtype, d_dtype = ctx.meta
        batch, padded, heads, headdim, groups, d_state, n_chunks, block_n = _launch_shapes(x_p, B_p)
        ieee = x_p.dtype == torch.float32
        dy_p = _padded(dy.to(x_p.dtype), padded)

        dstates = torch.empty_like(states)  # dL/dS_c, the gradient reaching h_{c+1}
        dinit = torch.empty(batch, heads, headdim, d_state, dtype=torch.float32, device=x_p.device)
        dfinal = None if dfinal is None else dfinal.float().contiguous()
        k.chunk_states_bwd_kernel[(d_state // block_n, batch * heads)](
            dy_p, log_decay, C_p, lam, dinit if dfinal is None else dfinal, dstates, dinit, padded, n_chunks, heads,
            groups, headdim, d_state, CHUNK, block_n, dfinal is not None, ieee, num_warps=WARPS["states"])

        dx = torch.empty_like(x_p)
        ddt = torch.empty_like(dt_p)
        dlog = torch.empty_like(dt_p)  # dL/db_t
        dlam = torch.empty_like(lam)
        dD = None if D_f is None else torch.empty_like(lam)  # per chunk and head, summed below
        dcb = torch.empty_like(cb)
        s.scan_bwd_x_kernel[(n_chunks, batch * groups)](
            x_p, dt_p, log_decay, lam, B_p, C_p, cb, states, dstates, dy_p, dx if D_f is None else D_f, dx, ddt,
            dlog, dlam, dlam if dD is None else dD, dcb, padded, n_chunks, heads, groups, headdim, d_state, CHUNK,
            block_n, D_f is not None, ieee, num_warps=WARPS["scan_bwd_x"])
        dB = torch.empty(B_p.shape, dtype=torch.float32, device=x_p.device)
        dC = torch.empty_like(dB)
        s.scan_bwd_bc_kernel[(n_chunks, batch * groups, d_state // block_n)](
            x_p, dt_p, log_decay, lam, B_p, C_p, dcb, states, dstates, dy_p, dB, dC, padded, n_chunks, heads,
            groups, headdim, d_state, CHUNK, block_n, ieee, num_warps=WARPS["scan_bwd_bc"])

        dlog = dlog.view(batch, n_chunks, CHUNK, heads)
        dlog[:, :, -1] += dlam  # lam_c is the chunk's last b
        d_step = dlog.flip(2).cumsum(2).flip(2).reshape(batch, padded, heads)  # b is a cumsum of dt * A
        d_dt = ddt + d_step * A.float()
        dA = (d_step * dt_p).sum((0, 1))
        dD = None if dD is None else dD.sum((0, 1)).to(d_dtype)
        return (dx[:, :length], d_dt[:, :length].to(dt_dtype), dA.to(A.dtype), dB[:, :length].to(b_dtype),
                dC[:, :length].to(c_dtype), dD, dinit if has_initial else None)


def chunk_ssd_triton(x, dt, A, B, C, D=None, initial_state=None):
    """y [B, T, H, P] in x's dtype and the final state [B, H, P, N] (fp32), as ``statex.ops.chunk_ssd``."""
    return _ChunkSSD.apply(x.contiguous(), dt.contiguous(), A, B.contiguous(), C.contiguous(), D, initial_state)
