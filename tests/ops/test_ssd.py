"""Every implementation of Mamba2's SSD against the float64 reference: the chunked torch form == per-token
recurrence == one-token step (values and gradients, odd lengths, groups, strong decay, initial states, pieces);
SSD through a GLA kernel (statex.ops.ssd.via_gla); statex's own Triton kernels (statex.ops.ssd.triton_chunk; on a
CPU under Triton's interpreter, skipped where Triton is absent); and on CUDA the fast kernels through
statex.runtime.dispatch against the torch path (skipped without CUDA and flash-linear-attention).

Triton is not in the test environment (with it, fla imports on a CPU and slows every process that looks for it by
about 10 s); run the Triton cases with

    pip install --target /tmp/tritonsite triton==3.6.0 'numpy<2.4'   # NumPy 2.4 breaks the interpreter's loops
    PYTHONPATH=/tmp/tritonsite pytest tests/ops/test_ssd.py
"""
import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import largest_saved_tensor, weighted_grads
from fast_path import TOLERANCE, assert_step_close, requires_cuda, run_both
from statex import runtime
from statex.ops.gla.split import torch_gla_kernel, torch_gla_step_kernel
from statex.ops.ssd import chunk_ssd, naive_recurrent_ssd, recurrent_ssd_step, ssd_as_gla
from statex.ops.ssd.triton_chunk import CHUNK, chunk_ssd_triton, supports  # imports no Triton until a kernel runs
from statex.runtime import dispatch

if not torch.cuda.is_available():
    # Read by Triton when it is imported and when kernels are defined and run: set before any of that. On a CPU
    # nothing else runs Triton kernels (fla's run only on CUDA tensors), so the setting touches only these tests.
    os.environ.setdefault("TRITON_INTERPRET", "1")
requires_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                     reason="needs Triton (see this file's docstring)")


def make_inputs(B=2, T=70, H=4, P=8, G=2, N=16, a_scale=1.0, dtype=torch.float64):
    x = torch.randn(B, T, H, P, dtype=dtype)
    dt = F.softplus(torch.randn(B, T, H, dtype=dtype))
    A = -torch.rand(H, dtype=dtype).add(0.5) * a_scale
    Bm = torch.randn(B, T, G, N, dtype=dtype)
    Cm = torch.randn(B, T, G, N, dtype=dtype)
    D = torch.randn(H, dtype=dtype)
    s0 = torch.randn(B, H, P, N, dtype=dtype)
    return x, dt, A, Bm, Cm, D, s0


@pytest.mark.parametrize("T", [1, 31, 32, 70])
@pytest.mark.parametrize("G", [1, 2, 4])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunk_matches_naive_forward(T, G, with_state):
    x, dt, A, Bm, Cm, D, s0 = make_inputs(T=T, G=G)
    s0 = s0 if with_state else None
    y_ref, s_ref = naive_recurrent_ssd(x, dt, A, Bm, Cm, D, s0)
    y, s = chunk_ssd(x, dt, A, Bm, Cm, D, s0, chunk_size=32)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s, s_ref, rtol=1e-10, atol=1e-10)


def test_chunk_gradients_match_naive():
    inputs = [t.requires_grad_() for t in make_inputs(T=45)]
    y_ref, s_ref = naive_recurrent_ssd(*inputs)
    w_y, w_s = torch.randn_like(y_ref), torch.randn_like(s_ref)
    ref = torch.autograd.grad((y_ref * w_y).sum() + (s_ref * w_s).sum(), inputs)
    y, s = chunk_ssd(*inputs, chunk_size=16)
    got = torch.autograd.grad((y * w_y).sum() + (s * w_s).sum(), inputs)
    for name, a, b in zip(["x", "dt", "A", "B", "C", "D", "state"], got, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"grad of {name}")


def test_strong_decay_is_stable():
    x, dt, A, Bm, Cm, D, s0 = make_inputs(T=100, a_scale=200.0)  # dt*A down to about -600 per step
    y_ref, s_ref = naive_recurrent_ssd(x, dt, A, Bm, Cm, D, s0)
    y, s = chunk_ssd(x, dt, A, Bm, Cm, D, s0, chunk_size=64)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    A32 = A.float().requires_grad_()
    y32, _ = chunk_ssd(x.float(), dt.float(), A32, Bm.float(), Cm.float(), D.float(), s0.float())
    (grad,) = torch.autograd.grad(y32.sum(), A32)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(y32.double(), y_ref, rtol=1e-4, atol=1e-4)


def test_pieces_equal_one_pass():
    x, dt, A, Bm, Cm, D, s0 = make_inputs(T=90)
    y_full, s_full = chunk_ssd(x, dt, A, Bm, Cm, D, s0, chunk_size=32)
    cut = 41
    y1, s1 = chunk_ssd(x[:, :cut], dt[:, :cut], A, Bm[:, :cut], Cm[:, :cut], D, s0, chunk_size=32)
    y2, s2 = chunk_ssd(x[:, cut:], dt[:, cut:], A, Bm[:, cut:], Cm[:, cut:], D, s1, chunk_size=32)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_full, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s2, s_full, rtol=1e-10, atol=1e-10)


def test_step_matches_naive():
    x, dt, A, Bm, Cm, D, s0 = make_inputs(T=7)
    y_ref, s_ref = naive_recurrent_ssd(x, dt, A, Bm, Cm, D, s0)
    state, ys = s0.clone(), []
    for t in range(x.shape[1]):
        y, state = recurrent_ssd_step(x[:, t], dt[:, t], A, Bm[:, t], Cm[:, t], D, state)
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys, 1), y_ref)
    torch.testing.assert_close(state, s_ref)


def test_memory_is_linear_no_quadratic_tensor():
    """The largest intermediate is [B, H, T, chunk]: doubling T doubles the peak autograd memory."""
    def saved_numel(T):
        x, dt, A, Bm, Cm, D, _ = make_inputs(B=1, T=T, H=2, P=4, G=1, N=4, dtype=torch.float32)
        return largest_saved_tensor(chunk_ssd, x.requires_grad_(), dt, A, Bm, Cm, D, chunk_size=32)

    assert saved_numel(2048) <= 2 * saved_numel(1024) + 64


# ---- SSD through a GLA kernel (statex.ops.ssd.via_gla) ----------------------------------------------------------------


@pytest.mark.parametrize("G", [1, 2, 4])
@pytest.mark.parametrize("key_block", [16, 8])
@pytest.mark.parametrize("with_state", [False, True])
def test_ssd_through_gla_kernel_equals_chunk_ssd(G, key_block, with_state):
    inputs = [t.requires_grad_() for t in make_inputs(T=50, G=G)]
    state = inputs[6] if with_state else None
    ref = chunk_ssd(*inputs[:6], initial_state=state, chunk_size=16)
    got = ssd_as_gla(torch_gla_kernel, *inputs[:6], initial_state=state, max_key_block=key_block)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-10, atol=1e-10)
    weights = [torch.randn_like(ref[0]), torch.randn_like(ref[1])]
    used = inputs if with_state else inputs[:6]
    for name, a, b in zip(["x", "dt", "A", "B", "C", "D", "state"], weighted_grads(got, used, weights),
                          weighted_grads(ref, used, weights)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"grad of {name}")


def test_ssd_decode_step_through_gla_kernel():
    x, dt, A, Bm, Cm, D, s0 = make_inputs(T=1)
    ref = recurrent_ssd_step(x[:, 0], dt[:, 0], A, Bm[:, 0], Cm[:, 0], D, s0)
    got = ssd_as_gla(torch_gla_step_kernel, x, dt, A, Bm, Cm, D, s0, max_key_block=8)
    torch.testing.assert_close(got[0][:, 0], ref[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-10, atol=1e-10)


# ---- statex's own Triton kernels (statex.ops.ssd.triton_chunk) ------------------------------------------------------


def test_own_triton_kernels_supported_shapes():
    x, B = torch.empty(1, 4, 8, 64), torch.empty(1, 4, 1, 128)
    assert supports(x, B)
    assert not supports(torch.empty(1, 4, 8, 48), B)  # head dimension not a power of two
    assert not supports(torch.empty(1, 4, 8, 256), B)  # head dimension above 128
    assert not supports(x, torch.empty(1, 4, 3, 128))  # heads not a multiple of groups


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# the interpreter's own use of NumPy (scalars as one-element arrays), not ours
interpreter_warnings = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")


def triton_inputs(batch, length, heads, groups, headdim, d_state, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, heads, headdim, generator=g)
    dt = torch.nn.functional.softplus(torch.randn(batch, length, heads, generator=g) - 1)
    A = -(torch.rand(heads, generator=g) * 2 + 0.1)
    B = torch.randn(batch, length, groups, d_state, generator=g) * 0.5
    C = torch.randn(batch, length, groups, d_state, generator=g) * 0.5
    D = torch.randn(heads, generator=g)
    h0 = torch.randn(batch, heads, headdim, d_state, generator=g)
    dy = torch.randn(batch, length, heads, headdim, generator=g)
    dfinal = torch.randn(batch, heads, headdim, d_state, generator=g)
    return (x, dt, A, B, C, D, h0), dy, dfinal


def run_ssd(fn, tensors, dy, dfinal, dtype, initial):
    leaves = [t.to(DEVICE, dtype).requires_grad_() for t in tensors]
    x, dt, A, B, C, D, h0 = leaves
    y, final = fn(x, dt, A, B, C, D, initial_state=h0 if initial else None)
    ((y.double() * dy.to(DEVICE, torch.float64)).sum() + (final.double() * dfinal.to(DEVICE, torch.float64)).sum()
     ).backward()
    grads = [t.grad for t in leaves[:6]] + ([h0.grad] if initial else [])
    return [y, final] + grads


NAMES = ("y", "final state", "dx", "d dt", "dA", "dB", "dC", "dD", "d initial state")


@requires_triton
@interpreter_warnings
@pytest.mark.parametrize("batch,length,heads,groups,headdim,d_state,initial", [
    (2, 100, 4, 2, 16, 32, True),  # a length that is not a multiple of the chunk, two groups
    (1, CHUNK, 4, 1, 16, 16, False),  # exactly one chunk, one group, no initial state
    (1, 2 * CHUNK + 2, 4, 4, 32, 128, True),  # one head per group; d_state in two column blocks
])
def test_own_triton_kernels_match_the_float64_reference(batch, length, heads, groups, headdim, d_state,
                                                          initial):
    tensors, dy, dfinal = triton_inputs(batch, length, heads, groups, headdim, d_state)
    reference = run_ssd(chunk_ssd, tensors, dy, dfinal, torch.float64, initial)
    got = run_ssd(chunk_ssd_triton, tensors, dy, dfinal, torch.float32, initial)
    for name, ref, value in zip(NAMES, reference, got):
        error = ((value.double() - ref).norm() / ref.norm()).item()
        assert error < 1e-4, f"{name}: relative error {error:.1e}"


@requires_triton
@interpreter_warnings
def test_own_triton_kernels_strong_decay_does_not_overflow():
    tensors, dy, dfinal = triton_inputs(1, 80, 2, 1, 16, 16)
    x, dt, A, B, C, D, h0 = tensors
    tensors = (x, dt * 50, A, B, C, D, h0)  # exp of in-chunk log decays down to about -1e4
    reference = run_ssd(chunk_ssd, tensors, dy, dfinal, torch.float64, True)
    got = run_ssd(chunk_ssd_triton, tensors, dy, dfinal, torch.float32, True)
    torch_fp32 = run_ssd(chunk_ssd, tensors, dy, dfinal, torch.float32, True)
    for name, ref, value, fp32 in zip(NAMES, reference, got, torch_fp32):
        assert torch.isfinite(value).all(), name
        error = ((value.double() - ref).norm() / ref.norm()).item()
        # dA sums every step's decay gradient, with cancellation: the torch path in fp32 is off by ~4e-4 too
        bound = max(1e-4, 2 * ((fp32.double() - ref).norm() / ref.norm()).item())
        assert error < bound, f"{name}: relative error {error:.1e} (bound {bound:.1e})"


# ---- CUDA: the fast kernels through the runtime's dispatch against the torch path ---------------------------------

CUDA_SHAPES = {  # (heads, headdim, ngroups, d_state); 8 of Mamba2-1.3B's 64 heads: the per-head math is the same
    "mamba2-1.3b": (8, 64, 1, 128),
    "mamba2-1.3b-statex": (8, 64, 1, 512),  # d_state x4
    "groups-2": (8, 64, 2, 128),
    "groups-8-statex": (16, 64, 8, 512),
}


@requires_cuda
@pytest.mark.parametrize("kernel", ["triton", "fla"])  # statex's own (the default), fla's chunk_gla
@pytest.mark.parametrize("shape", list(CUDA_SHAPES))
@pytest.mark.parametrize("length", [300, 1000])
@pytest.mark.parametrize("with_state", [False, True])
def test_cuda_chunk_matches_torch(kernel, shape, length, with_state):
    H, P, G, N = CUDA_SHAPES[shape]
    B, dev = 2, "cuda"
    x = torch.randn(B, length, H, P, device=dev)
    dt = F.softplus(torch.randn(B, length, H, device=dev) - 3)
    A = -torch.rand(H, device=dev).mul(15).add(1)
    Bm, Cm = torch.randn(B, length, G, N, device=dev), torch.randn(B, length, G, N, device=dev)
    D = torch.randn(H, device=dev)
    inputs = [x, dt, A, Bm, Cm, D] + ([torch.randn(B, H, P, N, device=dev)] if with_state else [])

    def fn(x, dt, A, Bm, Cm, D, s0=None):
        return dispatch.ssd_chunk(x, dt, A, Bm, Cm, D, s0)

    with runtime.use(ssd_kernel=kernel):  # dt, A, D and states stay fp32, as in the mixer
        errors, noise = run_both(fn, inputs, float_args=(1, 2, 5, 6), noise=True)
    # The gradient of A (grad2) is one number per head summed over batch x length x d_state terms of both
    # signs: cancellation makes its relative error large even when every term is accurate. It is held to
    # the error that rounding the inputs to bf16 causes in the fp32 reference itself (x3); all else to 1e-2.
    assert max(v for k, v in errors.items() if k != "grad2") < TOLERANCE, errors
    assert errors["grad2"] < max(TOLERANCE, 3 * noise["grad2"]), (errors, noise)


@requires_cuda
@pytest.mark.parametrize("d_state", [128, 512])
def test_cuda_decode_step_matches_torch(d_state):
    B, H, P, G, dev = 3, 8, 64, 1, "cuda"
    x = torch.randn(B, H, P, device=dev, dtype=torch.bfloat16)
    dt = F.softplus(torch.randn(B, H, device=dev))
    A = -torch.rand(H, device=dev).add(0.5)
    Bm, Cm = (torch.randn(B, G, d_state, device=dev, dtype=torch.bfloat16) for _ in range(2))
    D, s0 = torch.randn(H, device=dev), torch.randn(B, H, P, d_state, device=dev)
    with torch.no_grad():
        with runtime.use(backend="fla"):
            fast = dispatch.ssd_step(x, dt, A, Bm, Cm, D, s0)
        with runtime.use(backend="torch"):
            ref = dispatch.ssd_step(x, dt, A, Bm, Cm, D, s0)
    assert_step_close(fast, ref)
