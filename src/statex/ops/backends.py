"""Which kernel runs a mixer's recurrence (and the gated norm after it): fla's Triton kernels on CUDA tensors,
the pure-torch ops otherwise.

The mixers call only the functions at the bottom (``gla_chunk``, ``gla_step``, ``ssd_chunk``, ``ssd_step``,
``gated_rms_norm``); each takes the same arguments and returns the same layouts as the torch op it replaces.

Fast path (CUDA, flash-linear-attention installed, ``pip install 'statex[gpu]'``):

- GLA chunked forward/backward -> ``fla.ops.gla.chunk_gla``; decode step -> ``fla.ops.gla.fused_recurrent_gla``.
- Mamba2 SSD is GLA with one decay per head: q = C, k = B, v = x * dt, log decay = dt * A broadcast over the
  d_state channels, scale 1; its state [P, N] is fla's "v-first" layout. It runs on ``chunk_gla`` (fla's
  scalar-decay kernels refuse to run backward on Hopper with Triton < 3.7.1, docs/gpu.md).
- Large heads (StateX's merged GLA head of 1024 x 2048, Mamba2 d_state 512) are served as sub-heads of at
  most ``max_key_block`` x ``max_value_block``. This is exact: the decay acts per key channel, so the rows of
  the state evolve independently and so do its columns; key block i x value block j is an independent GLA
  head with state S[i, j], and value block j of the output is the sum over i of those sub-heads' outputs
  (with the merged head's scale). fla's kernels are tuned for heads up to 256 x 512, and a single 1024 x 2048
  head did not compile within minutes there.

Mamba2 SSD on CUDA runs by default in the project's own Triton kernels (``statex.ops.ssd.triton_chunk``: scalar
decay, C B^T once per group, forward and backward; measured and tested on the H200, docs/gpu.md);
``STATEX_SSD=fla`` (or ``set_ssd_kernel("fla")``) picks ``chunk_gla`` instead. Shapes the own kernels do not
support, or that fail, run on ``chunk_gla`` with a one-time warning. Mamba2's causal conv + SiLU from a zero
state runs in the project's own Triton kernel on CUDA too (``conv_silu``). Both need Triton, not fla.

Selection: ``STATEX_BACKEND`` = ``auto`` (default: fla on CUDA when importable), ``torch`` (always the
pure-torch ops) or ``fla`` (fla on CUDA, an error if it is missing); ``set_backend`` does the same in code.
fp64 inputs, CPU tensors and anything fla raises on in the forward pass run on torch; on CUDA each such
fallback prints a one-time warning, never a silent wrong answer. An unknown value of either variable is an
error (the CLI checks both before any work: ``check_settings``).
"""
from __future__ import annotations

import os
import warnings
from typing import Callable

import torch

from statex.ops.gla import chunk_gla as torch_chunk_gla
from statex.ops.gla import recurrent_gla_step as torch_gla_step
from statex.ops.ssd import chunk_ssd as torch_chunk_ssd
from statex.ops.ssd import recurrent_ssd_step as torch_ssd_step

BACKENDS = ("auto", "torch", "fla")
MAX_KEY_BLOCK = 256
MAX_VALUE_BLOCK = 512
CHUNK_MAX_VALUE_BLOCK = 2048  # chunk_gla only: the merged head as 4 sub-heads of 256 x 2048 (measured, docs/gpu.md)
MIN_BLOCK = 16

_backend = os.environ.get("STATEX_BACKEND", "auto")
SSD_KERNELS = ("fla", "triton")
_ssd_kernel = os.environ.get("STATEX_SSD", "triton")
_fla: dict | None = None  # fla's functions by role ("chunk", "step", "norm_then_gate", "grouped_norm"), or {}
_fla_error = [""]  # why fla could not be imported
_warned: set[str] = set()  # keys of the one-time warnings already given
_failed: set[str] = set()  # (op, shape) keys fla raised on; they run on torch from then on

# A GLA kernel: (q, k, v, g [B, T, H, K|V], scale, initial_state, state_v_first) -> (o, final_state).
GLAKernel = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def set_backend(name: str) -> None:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
    global _backend
    _backend = name


def set_ssd_kernel(name: str) -> None:
    """Which kernel runs Mamba2's chunked SSD on CUDA: ``triton`` (statex's own scalar-decay kernels, the
    default) or ``fla`` (chunk_gla)."""
    if name not in SSD_KERNELS:
        raise ValueError(f"unknown SSD kernel {name!r} (choose from {', '.join(SSD_KERNELS)})")
    global _ssd_kernel
    _ssd_kernel = name


def get_ssd_kernel() -> str:
    if _ssd_kernel not in SSD_KERNELS:
        raise ValueError(f"STATEX_SSD={_ssd_kernel!r} is not one of {', '.join(SSD_KERNELS)}")
    return _ssd_kernel


def check_settings() -> None:
    """Both environment choices valid, else one StatexError naming the bad one (the CLI checks this before any
    work, so a typo in STATEX_BACKEND or STATEX_SSD is an error up front, never the default or a traceback)."""
    from statex.errors import StatexError

    from statex.ops.autotune import resolve_mode

    try:
        get_backend(), get_ssd_kernel()
        resolve_mode(None)  # STATEX_AUTOTUNE: a typo is refused on every device, not only where CUDA reads it
    except ValueError as exc:
        raise StatexError(str(exc)) from None


def get_backend() -> str:
    if _backend not in BACKENDS:
        raise ValueError(f"STATEX_BACKEND={_backend!r} is not one of {', '.join(BACKENDS)}")
    return _backend


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _load_fla() -> dict:
    global _fla
    if _fla is None:
        try:
            from fla.modules.norm.fused_norm_gate import rms_norm_gated
            from fla.modules.norm.layernorm_gated import rmsnorm_fn
            from fla.ops.gla import chunk_gla, fused_recurrent_gla
            _fla = {"chunk": chunk_gla, "step": fused_recurrent_gla, "norm_then_gate": rms_norm_gated,
                    "grouped_norm": rmsnorm_fn}
        except Exception as exc:  # ImportError, or Triton failing to initialise
            _fla = {}
            _fla_error[0] = f"{type(exc).__name__}: {exc}"
    return _fla


def fla_available() -> bool:
    return bool(_load_fla())


def _wants_fla(*tensors: torch.Tensor) -> bool:
    backend = get_backend()
    if backend == "torch" or not tensors[0].is_cuda:
        return False
    if not _load_fla():
        if backend == "fla":
            raise RuntimeError(f"STATEX_BACKEND=fla but flash-linear-attention cannot be imported "
                               f"({_fla_error[0]}); pip install 'statex[gpu]'")
        _warn_once("no-fla", "flash-linear-attention is not importable "
                   f"({_fla_error[0]}); CUDA tensors run on the slow pure-torch path "
                   "(pip install 'statex[gpu]')")
        return False
    if any(t.dtype == torch.float64 for t in tensors):
        _warn_once("fp64", "fp64 inputs on CUDA run on the pure-torch path (the Triton kernels have no fp64)")
        return False
    return True


def _block(dim: int, limit: int) -> int | None:
    """The largest block size <= limit that divides dim (dim itself when it fits); None if only tiny ones do."""
    if dim <= limit:
        return dim
    for size in range(limit, min(MIN_BLOCK, limit) - 1, -1):
        if dim % size == 0:
            return size
    return None


def split_heads_gla(kernel: GLAKernel, q, k, v, g, scale: float, initial_state=None, state_v_first: bool = False,
                    max_key_block: int | None = None, max_value_block: int | None = None):
    """Run ``kernel`` on heads of key dim K and value dim V as (K/Kb) x (V/Vb) sub-heads of Kb x Vb
    (exact; see the module docstring). Shapes in and out are those of the unsplit call. The limits default to
    MAX_KEY_BLOCK and MAX_VALUE_BLOCK as they are at the call."""
    max_key_block = MAX_KEY_BLOCK if max_key_block is None else max_key_block
    max_value_block = MAX_VALUE_BLOCK if max_value_block is None else max_value_block
    batch, length, heads, key_dim = q.shape
    value_dim = v.shape[-1]
    kb, vb = _block(key_dim, max_key_block), _block(value_dim, max_value_block)
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


def ssd_as_gla(kernel: GLAKernel, x, dt, A, B, C, D=None, initial_state=None, **blocks):
    """Mamba2's SSD through a GLA kernel: q = C, k = B (groups repeated to heads), v = x * dt, log decay dt * A
    on every d_state channel, scale 1; the state [B, H, P, N] is the kernel's v-first layout. Same arguments
    and results as ``statex.ops.chunk_ssd``."""
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


# ---- kernels behind the GLAKernel signature ----------------------------------------------------------------------


def torch_gla_kernel(q, k, v, g, scale, initial_state, state_v_first):
    """The pure-torch chunked GLA behind the GLAKernel signature (the reference the fla kernels are tested
    against, and what the CPU tests of ``split_heads_gla`` and ``ssd_as_gla`` run)."""
    if initial_state is not None and state_v_first:
        initial_state = initial_state.transpose(-1, -2)
    o, final = torch_chunk_gla(q, k, v, g, scale=scale, initial_state=initial_state)
    return o, final.transpose(-1, -2) if state_v_first else final


def _fla_chunk(q, k, v, g, scale, initial_state, state_v_first):
    return _load_fla()["chunk"](q.contiguous(), k.contiguous(), v.contiguous(), g.contiguous(), scale=scale,
                                initial_state=None if initial_state is None else initial_state.float().contiguous(),
                                output_final_state=True, state_v_first=state_v_first)


def _fla_step(q, k, v, g, scale, initial_state, state_v_first):
    # One token: the fp32 state (K x V per head) dominates the memory traffic, so q, k, v go in as fp32 too
    # and the step computes what the torch step computes (which upcasts everything to the state's dtype).
    q, k, v = q.float(), k.float(), v.float()
    return _load_fla()["step"](q.contiguous(), k.contiguous(), v.contiguous(), gk=g.contiguous(), scale=scale,
                               initial_state=None if initial_state is None else initial_state.float().contiguous(),
                               output_final_state=True, state_v_first=state_v_first)


def _try_fla(name: str, shape_key: tuple, call: Callable, fallback: Callable):
    key = f"{name}:{shape_key}"
    if key in _failed:
        return fallback()
    try:
        return call()
    except Exception as exc:
        if get_backend() == "fla":
            raise
        _failed.add(key)
        _warn_once(key, f"{name} failed for shape {shape_key} ({type(exc).__name__}: {exc}); using the "
                   "fallback path for this shape")
        return fallback()


# ---- what the mixers call ----------------------------------------------------------------------------------------


def gated_rms_norm(x, gate, weight, eps: float, group_size: int, norm_before_gate: bool, torch_path: Callable):
    """The gated RMSNorm after a mixer's recurrence (``statex.models.layers.GroupedGatedRMSNorm``; torch_path
    computes it). On CUDA it runs fla's fused Triton kernels, one pass forward and one backward instead of a
    dozen fp32 elementwise passes: ``rms_norm_gated`` (the kernel of fla's own GLA layer) for norm-then-gate
    with one weight shared by every group, ``rmsnorm_fn`` (grouped, either order) otherwise."""
    if not _wants_fla(x, gate):
        return torch_path()
    width = x.shape[-1]

    def fla_path():
        fla = _load_fla()
        if norm_before_gate and weight.shape[0] == group_size:
            shape = (*x.shape[:-1], width // group_size, group_size)
            y = fla["norm_then_gate"](x.reshape(shape), gate.reshape(shape), weight, None, activation="swish",
                                      eps=eps)
            return y.reshape(x.shape)
        full = weight if weight.shape[0] == width else weight.repeat(width // weight.shape[0])
        return fla["grouped_norm"](x, full, None, z=gate, eps=eps, group_size=group_size,
                                   norm_before_gate=norm_before_gate)

    return _try_fla("gated_rms_norm", (width, group_size, norm_before_gate), fla_path, torch_path)


def conv_silu(x, weight, bias, torch_path: Callable):
    """silu(causal depthwise conv(x) + bias) from a zero state (``statex.models.layers.CausalConv1d``; torch_path
    computes it): on CUDA statex's own Triton kernel (``statex.ops.conv``), one pass each way instead of a dozen
    elementwise ones. Needs Triton only, not fla."""
    if get_backend() == "torch" or not x.is_cuda or x.dtype == torch.float64:
        return torch_path()

    def kernel():
        from statex.ops.conv.triton_conv import conv_silu as triton_conv_silu

        return triton_conv_silu(x, weight, bias)

    return _try_fla("conv_silu (statex triton)", (x.shape[-1], weight.shape[-1]), kernel, torch_path)


def gla_chunk(q, k, v, g, scale: float, initial_state=None, chunk_size: int = 32):
    """GLA over a sequence: o [B, T, H, V], final state [B, H, K, V] (fp32)."""
    def torch_path():
        return torch_chunk_gla(q, k, v, g, scale=scale, initial_state=initial_state, chunk_size=chunk_size)

    if not _wants_fla(q, k, v, g):
        return torch_path()

    def fla_path():
        # fla's own GLA layer keeps its state V-first ([V, K]); the kernels are called the same way here and
        # only the states at the call's boundary are transposed to and from statex's [K, V].
        h0 = None if initial_state is None else initial_state.transpose(-1, -2)
        o, final = split_heads_gla(_fla_chunk, q, k, v, g, scale, h0, state_v_first=True,
                                   max_value_block=CHUNK_MAX_VALUE_BLOCK)
        return o, final.transpose(-1, -2).contiguous()

    return _try_fla("chunk_gla", tuple(q.shape[2:]) + (v.shape[-1],), fla_path, torch_path)


def gla_step(q, k, v, g, state, scale: float):
    """One decoding step: q, k, g [B, H, K], v [B, H, V], state [B, H, K, V] -> (o [B, H, V], new state), both
    in the state's dtype (fp32) on both paths."""
    def torch_path():
        return torch_gla_step(q, k, v, g, state, scale)

    if not _wants_fla(q, k, v, state):
        return torch_path()

    def fla_path():
        o, new = split_heads_gla(_fla_step, q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), g.unsqueeze(1), scale,
                                 state)
        return o.squeeze(1), new

    return _try_fla("fused_recurrent_gla", tuple(q.shape[1:]) + (v.shape[-1],), fla_path, torch_path)


def ssd_chunk(x, dt, A, B, C, D=None, initial_state=None, chunk_size: int = 64):
    """Mamba2's SSD over a sequence: y [B, T, H, P], final state [B, H, P, N] (fp32)."""
    def torch_path():
        return torch_chunk_ssd(x, dt, A, B, C, D, initial_state=initial_state, chunk_size=chunk_size)

    def gla_path():
        if not _wants_fla(x, B, C):
            return torch_path()
        return _try_fla("ssd via chunk_gla", tuple(x.shape[2:]) + tuple(B.shape[2:]),
                        lambda: ssd_as_gla(_fla_chunk, x, dt, A, B, C, D, initial_state), torch_path)

    if get_ssd_kernel() == "triton" and get_backend() != "torch" and x.is_cuda and x.dtype != torch.float64:
        from statex.ops.ssd import triton_chunk

        shape = tuple(x.shape[2:]) + tuple(B.shape[2:])
        if not triton_chunk.supports(x, B):
            _warn_once(f"ssd-triton-shape:{shape}", f"STATEX_SSD=triton: shape {shape} is not supported (head "
                       "dimension and d_state powers of two >= 16, head dimension <= 128); using the default path")
            return gla_path()
        return _try_fla("ssd (statex triton)", shape, lambda: triton_chunk.chunk_ssd_triton(
            x, dt, A, B, C, D, initial_state), gla_path)
    return gla_path()


def ssd_step(x, dt, A, B, C, D, state):
    """One decoding step: x [B, H, P], dt [B, H], B/C [B, G, N], state [B, H, P, N] -> (y [B, H, P], state)."""
    def torch_path():
        return torch_ssd_step(x, dt, A, B, C, D, state)

    if not _wants_fla(x, B, state):
        return torch_path()

    def fla_path():
        y, new = ssd_as_gla(_fla_step, x.float().unsqueeze(1), dt.unsqueeze(1), A, B.unsqueeze(1), C.unsqueeze(1),
                            D, state)  # fp32 x: v = x * dt is not rounded to x's dtype in a step
        return y.squeeze(1), new

    return _try_fla("ssd via fused_recurrent_gla", tuple(x.shape[1:]) + tuple(B.shape[1:]), fla_path, torch_path)
