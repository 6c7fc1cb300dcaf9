"""Which kernel runs a mixer's recurrence, its gated norm and Mamba2's convolution: the fast kernels on CUDA
tensors, the pure-torch ops (``statex.ops``) otherwise.

The mixers call only the functions at the bottom; each takes the same arguments and returns the same layouts as the
torch op it replaces:

| call              | CUDA (fast)                                                        | otherwise        |
|-------------------|--------------------------------------------------------------------|------------------|
| ``gla_chunk``     | fla ``chunk_gla``, heads split into sub-heads (``ops.gla.split``)   | ``ops.chunk_gla`` |
| ``gla_step``      | fla ``fused_recurrent_gla``, split likewise                         | ``ops.recurrent_gla_step`` |
| ``ssd_chunk``     | statex's own Triton SSD (``ops.ssd.triton_chunk``), or fla ``chunk_gla`` through ``ops.ssd.via_gla`` | ``ops.chunk_ssd`` |
| ``ssd_step``      | fla ``fused_recurrent_gla`` through ``ops.ssd.via_gla``             | ``ops.recurrent_ssd_step`` |
| ``gated_rms_norm``| fla's fused gated RMSNorm kernels                                   | the layer's torch code |
| ``conv_silu``     | statex's own Triton causal conv + SiLU (``ops.conv``)               | the layer's torch code |

fla's kernels need ``pip install 'statex[gpu]'``; statex's own need Triton only. The settings
(``statex.runtime.settings``) choose: backend ``torch`` runs the torch column everywhere; ``fla`` runs the fast
column and raises where it cannot; ``auto`` (default) runs the fast column and, where a kernel cannot take a call
(fp64, fla missing, an unsupported shape, an error), the torch path, said once per kernel and shape with the reason.
fla's scalar-decay kernels are not used: they refuse to run backward on Hopper with Triton < 3.7.1 (docs/gpu.md).
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch

from statex.ops import chunk_gla, chunk_ssd, recurrent_gla_step, recurrent_ssd_step
from statex.ops.gla.split import split_heads_gla
from statex.ops.ssd.via_gla import ssd_as_gla
from statex.runtime.settings import current

_fla: dict | None = None  # fla's functions by role ("chunk", "step", "norm_then_gate", "grouped_norm"), or {}
_fla_error = [""]  # why fla could not be imported
_warned: set[str] = set()  # keys of the one-time messages already given
_failed: set[str] = set()  # (kernel, shape) keys a fast kernel raised on; they run on the fallback from then on


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def _load_fla() -> dict:
    global _fla
    if _fla is None:
        try:
            from fla.modules.norm.fused_norm_gate import rms_norm_gated
            from fla.modules.norm.layernorm_gated import rmsnorm_fn
            from fla.ops.gla import chunk_gla as fla_chunk_gla
            from fla.ops.gla import fused_recurrent_gla
            _fla = {"chunk": fla_chunk_gla, "step": fused_recurrent_gla, "norm_then_gate": rms_norm_gated,
                    "grouped_norm": rmsnorm_fn}
        except Exception as exc:  # ImportError, or Triton failing to initialise
            _fla = {}
            _fla_error[0] = f"{type(exc).__name__}: {exc}"
    return _fla


def fla_available() -> bool:
    return bool(_load_fla())


def forget_failures() -> None:
    """Try the fast kernels again on shapes that failed before (and repeat the messages)."""
    _failed.clear()
    _warned.clear()


def _fast(kernel: str, shape: tuple, *tensors: torch.Tensor, needs_fla: bool = True) -> bool:
    """Whether ``kernel`` runs on the fast path for these tensors; a reason it cannot is said once (auto) or
    raised (backend fla)."""
    backend = current().backend
    if backend == "torch" or not tensors[0].is_cuda:
        return False
    reason = None
    if needs_fla and not _load_fla():
        reason = f"flash-linear-attention cannot be imported ({_fla_error[0]}; pip install 'statex[gpu]')"
    elif any(t.dtype == torch.float64 for t in tensors):
        reason = "fp64 inputs (the Triton kernels have no fp64)"
    if reason is None:
        return True
    if backend == "fla":
        raise RuntimeError(f"STATEX_BACKEND=fla: {kernel} cannot run for shape {shape}: {reason}")
    _warn_once(f"{kernel}:{reason}", f"{kernel} for shape {shape} runs on the pure-torch path: {reason}")
    return False


def _try(kernel: str, shape: tuple, call: Callable, fallback: Callable):
    key = f"{kernel}:{shape}"
    if key in _failed:
        return fallback()
    try:
        return call()
    except Exception as exc:
        if current().backend == "fla":
            raise
        _failed.add(key)
        _warn_once(key, f"{kernel} failed for shape {shape} ({type(exc).__name__}: {exc}); using the fallback "
                   "path for this shape from now on")
        return fallback()


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


def _chunk_blocks() -> dict:
    settings = current()
    return dict(max_key_block=settings.max_key_block, max_value_block=settings.chunk_max_value_block)


def _step_blocks() -> dict:
    settings = current()
    return dict(max_key_block=settings.max_key_block, max_value_block=settings.max_value_block)


# ---- what the mixers call ----------------------------------------------------------------------------------------


def gated_rms_norm(x, gate, weight, eps: float, group_size: int, norm_before_gate: bool, torch_path: Callable):
    """The gated RMSNorm after a mixer's recurrence (``statex.models.layers.GroupedGatedRMSNorm``; torch_path
    computes it). On CUDA fla's fused kernels, one pass each way instead of a dozen fp32 elementwise passes:
    ``rms_norm_gated`` (the kernel of fla's own GLA layer) for norm-then-gate with one weight shared by every
    group, ``rmsnorm_fn`` (grouped, either order) otherwise."""
    width = x.shape[-1]
    shape = (width, group_size, norm_before_gate)
    if not _fast("gated_rms_norm", shape, x, gate):
        return torch_path()

    def fla_path():
        fla = _load_fla()
        if norm_before_gate and weight.shape[0] == group_size:
            grouped = (*x.shape[:-1], width // group_size, group_size)
            y = fla["norm_then_gate"](x.reshape(grouped), gate.reshape(grouped), weight, None, activation="swish",
                                      eps=eps)
            return y.reshape(x.shape)
        full = weight if weight.shape[0] == width else weight.repeat(width // weight.shape[0])
        return fla["grouped_norm"](x, full, None, z=gate, eps=eps, group_size=group_size,
                                   norm_before_gate=norm_before_gate)

    return _try("gated_rms_norm", shape, fla_path, torch_path)


def conv_silu(x, weight, bias, torch_path: Callable):
    """silu(causal depthwise conv(x) + bias) from a zero state (``statex.models.layers.CausalConv1d``; torch_path
    computes it): on CUDA statex's own Triton kernel (``statex.ops.conv``), one pass each way."""
    shape = (x.shape[-1], weight.shape[-1])
    if not _fast("conv_silu (statex triton)", shape, x, needs_fla=False):
        return torch_path()

    def kernel():
        from statex.ops.conv.triton_conv import conv_silu as triton_conv_silu

        return triton_conv_silu(x, weight, bias)

    return _try("conv_silu (statex triton)", shape, kernel, torch_path)


def gla_chunk(q, k, v, g, scale: float, initial_state=None, chunk_size: int = 32):
    """GLA over a sequence: o [B, T, H, V], final state [B, H, K, V] (fp32)."""
    def torch_path():
        return chunk_gla(q, k, v, g, scale=scale, initial_state=initial_state, chunk_size=chunk_size)

    shape = tuple(q.shape[2:]) + (v.shape[-1],)
    if not _fast("chunk_gla", shape, q, k, v, g):
        return torch_path()

    def fla_path():
        # fla's own GLA layer keeps its state V-first ([V, K]); the kernels are called the same way here and
        # only the states at the call's boundary are transposed to and from statex's [K, V].
        h0 = None if initial_state is None else initial_state.transpose(-1, -2)
        o, final = split_heads_gla(_fla_chunk, q, k, v, g, scale, h0, state_v_first=True, **_chunk_blocks())
        return o, final.transpose(-1, -2).contiguous()

    return _try("chunk_gla", shape, fla_path, torch_path)


def gla_step(q, k, v, g, state, scale: float):
    """One decoding step: q, k, g [B, H, K], v [B, H, V], state [B, H, K, V] -> (o [B, H, V], new state), both
    in the state's dtype (fp32) on both paths."""
    def torch_path():
        return recurrent_gla_step(q, k, v, g, state, scale)

    shape = tuple(q.shape[1:]) + (v.shape[-1],)
    if not _fast("fused_recurrent_gla", shape, q, k, v, state):
        return torch_path()

    def fla_path():
        o, new = split_heads_gla(_fla_step, q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), g.unsqueeze(1), scale,
                                 state, **_step_blocks())
        return o.squeeze(1), new

    return _try("fused_recurrent_gla", shape, fla_path, torch_path)


def ssd_chunk(x, dt, A, B, C, D=None, initial_state=None, chunk_size: int = 64):
    """Mamba2's SSD over a sequence: y [B, T, H, P], final state [B, H, P, N] (fp32)."""
    def torch_path():
        return chunk_ssd(x, dt, A, B, C, D, initial_state=initial_state, chunk_size=chunk_size)

    shape = tuple(x.shape[2:]) + tuple(B.shape[2:])

    def gla_path():
        if not _fast("ssd via chunk_gla", shape, x, B, C):
            return torch_path()
        return _try("ssd via chunk_gla", shape,
                    lambda: ssd_as_gla(_fla_chunk, x, dt, A, B, C, D, initial_state, **_chunk_blocks()), torch_path)

    if current().ssd_kernel == "triton" and _fast("ssd (statex triton)", shape, x, B, C, needs_fla=False):
        from statex.ops.ssd import triton_chunk

        if not triton_chunk.supports(x, B):
            _warn_once(f"ssd-triton-shape:{shape}", f"ssd (statex triton) does not support shape {shape} (head "
                       "dimension and d_state powers of two >= 16, head dimension <= 128); using chunk_gla")
            return gla_path()
        return _try("ssd (statex triton)", shape,
                    lambda: triton_chunk.chunk_ssd_triton(x, dt, A, B, C, D, initial_state), gla_path)
    return gla_path()


def ssd_step(x, dt, A, B, C, D, state):
    """One decoding step: x [B, H, P], dt [B, H], B/C [B, G, N], state [B, H, P, N] -> (y [B, H, P], state)."""
    def torch_path():
        return recurrent_ssd_step(x, dt, A, B, C, D, state)

    shape = tuple(x.shape[1:]) + tuple(B.shape[1:])
    if not _fast("ssd via fused_recurrent_gla", shape, x, B, state):
        return torch_path()

    def fla_path():
        y, new = ssd_as_gla(_fla_step, x.float().unsqueeze(1), dt.unsqueeze(1), A, B.unsqueeze(1), C.unsqueeze(1),
                            D, state, **_step_blocks())  # fp32 x: v = x * dt is not rounded to x's dtype in a step
        return y.squeeze(1), new

    return _try("ssd via fused_recurrent_gla", shape, fla_path, torch_path)
