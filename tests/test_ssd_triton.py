"""statex's own Triton SSD kernels (statex.ops.ssd.triton_chunk) against the float64 torch reference: values and
the gradients of x, dt, A, B, C, D and the initial state. Without a GPU the kernels run under Triton's CPU
interpreter, with fp32 dots in IEEE precision, so the tolerances are fp32's; tests/test_gpu.py runs them on CUDA
in bf16. Needs Triton, which the test environment does not install (with Triton present, fla imports on a CPU
and slows every process that looks for it by about 10 s); run them with

    pip install --target /tmp/tritonsite triton==3.6.0 'numpy<2.4'   # NumPy 2.4 breaks the interpreter's loops
    PYTHONPATH=/tmp/tritonsite pytest tests/test_ssd_triton.py
"""
import os

import pytest
import torch

from statex.ops.ssd import chunk_ssd

if not torch.cuda.is_available():
    # Read by Triton when it is imported and when kernels are defined and run: set before any of that. On a CPU
    # nothing else runs Triton kernels (fla's run only on CUDA tensors), so the setting touches only these tests.
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton", reason="needs Triton (see this file's docstring)")

from statex.ops.ssd.triton_chunk import CHUNK, chunk_ssd_triton  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# the interpreter's own use of NumPy (scalars as one-element arrays), not ours
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")


def _inputs(batch, length, heads, groups, headdim, d_state, seed=0):
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


def _run(fn, tensors, dy, dfinal, dtype, initial):
    leaves = [t.to(DEVICE, dtype).requires_grad_() for t in tensors]
    x, dt, A, B, C, D, h0 = leaves
    y, final = fn(x, dt, A, B, C, D, initial_state=h0 if initial else None)
    ((y.double() * dy.to(DEVICE, torch.float64)).sum() + (final.double() * dfinal.to(DEVICE, torch.float64)).sum()
     ).backward()
    grads = [t.grad for t in leaves[:6]] + ([h0.grad] if initial else [])
    return [y, final] + grads


NAMES = ("y", "final state", "dx", "d dt", "dA", "dB", "dC", "dD", "d initial state")


@pytest.mark.parametrize("batch,length,heads,groups,headdim,d_state,initial", [
    (2, 100, 4, 2, 16, 32, True),  # a length that is not a multiple of the chunk, two groups
    (1, CHUNK, 4, 1, 16, 16, False),  # exactly one chunk, one group, no initial state
    (1, 2 * CHUNK + 2, 4, 4, 32, 128, True),  # one head per group; d_state in two column blocks
])
def test_values_and_every_gradient_match_the_float64_reference(batch, length, heads, groups, headdim, d_state,
                                                               initial):
    tensors, dy, dfinal = _inputs(batch, length, heads, groups, headdim, d_state)
    reference = _run(chunk_ssd, tensors, dy, dfinal, torch.float64, initial)
    got = _run(chunk_ssd_triton, tensors, dy, dfinal, torch.float32, initial)
    for name, ref, value in zip(NAMES, reference, got):
        error = ((value.double() - ref).norm() / ref.norm()).item()
        assert error < 1e-4, f"{name}: relative error {error:.1e}"


def test_strong_decay_does_not_overflow():
    tensors, dy, dfinal = _inputs(1, 80, 2, 1, 16, 16)
    x, dt, A, B, C, D, h0 = tensors
    tensors = (x, dt * 50, A, B, C, D, h0)  # exp of in-chunk log decays down to about -1e4
    reference = _run(chunk_ssd, tensors, dy, dfinal, torch.float64, True)
    got = _run(chunk_ssd_triton, tensors, dy, dfinal, torch.float32, True)
    torch_fp32 = _run(chunk_ssd, tensors, dy, dfinal, torch.float32, True)
    for name, ref, value, fp32 in zip(NAMES, reference, got, torch_fp32):
        assert torch.isfinite(value).all(), name
        error = ((value.double() - ref).norm() / ref.norm()).item()
        # dA sums every step's decay gradient, with cancellation: the torch path in fp32 is off by ~4e-4 too
        bound = max(1e-4, 2 * ((fp32.double() - ref).norm() / ref.norm()).item())
        assert error < bound, f"{name}: relative error {error:.1e} (bound {bound:.1e})"
