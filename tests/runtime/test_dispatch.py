"""The runtime's dispatch on CPU: CPU tensors and backend torch run the torch ops; a failing fast kernel falls back
once, said with its shape and reason (backend fla raises instead); the plumbing into fla's functions (gated norm,
chunked GLA with V-first states and sub-heads) checked with torch stand-ins against the torch ops in float64; the
SSD kernel choice. On CUDA the gated norm through fla's kernels against the torch path (the GLA, SSD and conv kernels'
CUDA cases are in tests/ops/)."""
import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from conftest import gla_inputs, weighted_grads
from fast_path import TOLERANCE, requires_cuda, run_both
from statex import runtime
from statex.ops.gla import chunk_gla
from statex.ops.gla.split import torch_gla_kernel
from statex.ops.ssd import chunk_ssd
from statex.runtime import dispatch


def ssd_inputs(B=2, T=50, H=4, P=8, G=2, N=16, dtype=torch.float64):
    x = torch.randn(B, T, H, P, dtype=dtype)
    dt = F.softplus(torch.randn(B, T, H, dtype=dtype))
    A = -torch.rand(H, dtype=dtype).add(0.5)
    Bm, Cm = torch.randn(B, T, G, N, dtype=dtype), torch.randn(B, T, G, N, dtype=dtype)
    D = torch.randn(H, dtype=dtype)
    s0 = torch.randn(B, H, P, N, dtype=dtype)
    return x, dt, A, Bm, Cm, D, s0


@pytest.fixture(autouse=True)
def _fresh_failures():
    dispatch.forget_failures()
    yield
    dispatch.forget_failures()


def test_cpu_tensors_run_the_torch_ops():
    q, k, v, g, s0 = gla_inputs(dtype=torch.float32)
    for name in ("auto", "fla"):  # fla is only for CUDA tensors: CPU tensors never need it
        with runtime.use(backend=name):
            o, s = dispatch.gla_chunk(q, k, v, g, 0.3, s0, 16)
        o_ref, s_ref = chunk_gla(q, k, v, g, scale=0.3, initial_state=s0, chunk_size=16)
        assert torch.equal(o, o_ref) and torch.equal(s, s_ref)
    x, dt, A, Bm, Cm, D, s0 = ssd_inputs(dtype=torch.float32)
    y, s = dispatch.ssd_chunk(x, dt, A, Bm, Cm, D, s0, 32)
    y_ref, s_ref = chunk_ssd(x, dt, A, Bm, Cm, D, initial_state=s0, chunk_size=32)
    assert torch.equal(y, y_ref) and torch.equal(s, s_ref)


def test_a_failing_fast_kernel_falls_back_once_with_a_warning():
    calls = []

    def broken():
        calls.append(1)
        raise RuntimeError("no kernel for this shape")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert dispatch._try("op", (1, 2), broken, lambda: "torch") == "torch"
        assert dispatch._try("op", (1, 2), broken, lambda: "torch") == "torch"
    assert len(calls) == 1  # the shape is remembered: no second attempt
    said = [str(w.message) for w in caught if "using the fallback path" in str(w.message)]
    assert len(said) == 1 and "(1, 2)" in said[0] and "no kernel for this shape" in said[0]  # shape and why
    with runtime.use(backend="fla"):  # an explicit request for the fast kernels never hides their errors
        with pytest.raises(RuntimeError, match="no kernel"):
            dispatch._try("op", (3,), broken, lambda: "torch")


def test_a_kernel_that_cannot_take_a_call_says_so_once_naming_shape_and_reason(monkeypatch):
    monkeypatch.setattr(dispatch, "_fla", {})
    monkeypatch.setattr(dispatch, "_fla_error", ["ImportError: no module named fla"])
    cuda_like = SimpleNamespace(is_cuda=True, dtype=torch.bfloat16)  # what the dispatch looks at
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not dispatch._fast("chunk_gla", (4, 64, 128), cuda_like)
        assert not dispatch._fast("chunk_gla", (4, 64, 128), cuda_like)
    said = [str(w.message) for w in caught]
    assert len(said) == 1 and "(4, 64, 128)" in said[0] and "cannot be imported" in said[0]
    with runtime.use(backend="fla"), pytest.raises(RuntimeError, match="STATEX_BACKEND=fla: chunk_gla cannot run"):
        dispatch._fast("chunk_gla", (4, 64, 128), cuda_like)
    with runtime.use(backend="torch"):  # the torch path for everything, own Triton kernels included: no question
        assert not dispatch._fast("conv_silu (statex triton)", (8, 4), cuda_like, needs_fla=False)


# ---- the gated norm: plumbing into fla's two fused-norm functions, checked with torch stand-ins -------------------


def fake_norm_then_gate(x, g, weight, bias, activation="swish", eps=1e-6):
    """fla's rms_norm_gated as documented: RMSNorm over the last dim, times weight, times silu(g)."""
    assert bias is None and activation == "swish"
    return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight * F.silu(g)).to(x.dtype)


def fake_grouped_norm(x, weight, bias, z=None, eps=1e-6, group_size=None, norm_before_gate=True):
    """fla's rmsnorm_fn as documented: groups of group_size channels, weight over all channels, SiLU gate z
    applied before the norm or after it."""
    assert bias is None and weight.shape[0] == x.shape[-1]
    if not norm_before_gate:
        x = x * F.silu(z)
    grouped = x.unflatten(-1, (-1, group_size or x.shape[-1]))
    y = (grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + eps)).flatten(-2) * weight
    return y * F.silu(z) if norm_before_gate else y


@pytest.mark.parametrize("weight_dim,group_size,norm_before_gate", [
    (16, 16, True),  # GLA: per-head norm, one weight shared by all heads (-> rms_norm_gated)
    (64, 32, False),  # Mamba2 with 2 groups: gate, then grouped norm, weight over all channels (-> rmsnorm_fn)
    (64, 16, True),  # norm first, weight over all channels (-> rmsnorm_fn)
    (16, 16, False),  # shared weight, gate first (-> rmsnorm_fn with the weight repeated)
])
def test_gated_norm_reaches_fla_functions_with_the_right_shapes(monkeypatch, weight_dim, group_size,
                                                                norm_before_gate):
    from statex.models.layers import GroupedGatedRMSNorm

    norm = GroupedGatedRMSNorm(weight_dim, group_size, eps=1e-5, norm_before_gate=norm_before_gate).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x, gate = torch.randn(2, 5, 64, dtype=torch.float64), torch.randn(2, 5, 64, dtype=torch.float64)
    calls = []
    monkeypatch.setattr(dispatch, "_fast", lambda *a, **k: True)
    monkeypatch.setattr(dispatch, "_fla", {
        "norm_then_gate": lambda *a, **k: calls.append("norm_then_gate") or fake_norm_then_gate(*a, **k),
        "grouped_norm": lambda *a, **k: calls.append("grouped_norm") or fake_grouped_norm(*a, **k)})
    inputs = [t.clone().requires_grad_() for t in (x, gate)]
    fast = norm(*inputs)
    g_fast = torch.autograd.grad(fast.sum(), [*inputs, norm.weight])
    ref_inputs = [t.clone().requires_grad_() for t in (x, gate)]
    ref = norm.reference(*ref_inputs)
    g_ref = torch.autograd.grad(ref.sum(), [*ref_inputs, norm.weight])
    expected = "norm_then_gate" if norm_before_gate and weight_dim == group_size else "grouped_norm"
    assert calls == [expected]
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("with_state", [False, True])
def test_gla_chunk_fast_path_plumbing_with_a_stand_in_kernel(monkeypatch, with_state):
    """gla_chunk's CUDA path (V-first states at the kernel, as fla's own layer, and a 512-key head split into
    sub-heads) with fla's chunk_gla replaced by the torch kernel behind the same signature: values, the final
    state in statex's [K, V] layout, and every gradient equal the torch op's."""

    def stand_in(q, k, v, g, scale=None, initial_state=None, output_final_state=False, state_v_first=False):
        return torch_gla_kernel(q, k, v, g, scale, initial_state, state_v_first)

    monkeypatch.setattr(dispatch, "_fast", lambda *a, **k: True)
    monkeypatch.setattr(dispatch, "_fla", {"chunk": stand_in})
    B, T, H, K, V = 2, 37, 1, 512, 24
    inputs = [torch.randn(B, T, H, K, dtype=torch.float64), torch.randn(B, T, H, K, dtype=torch.float64),
              torch.randn(B, T, H, V, dtype=torch.float64),
              F.logsigmoid(torch.randn(B, T, H, K, dtype=torch.float64)) / 8]
    if with_state:
        inputs.append(torch.randn(B, H, K, V, dtype=torch.float64))
    weights = [torch.randn(B, T, H, V, dtype=torch.float64), torch.randn(B, H, K, V, dtype=torch.float64)]
    results = []
    for fn in (dispatch.gla_chunk, lambda *a: chunk_gla(*a[:4], scale=a[4], initial_state=a[5])):
        leaves = [x.clone().requires_grad_() for x in inputs]
        o, final = fn(*leaves[:4], K**-0.5, leaves[4] if with_state else None)
        assert final.shape == (B, H, K, V) and final.is_contiguous()
        results.append([o, final, *weighted_grads([o, final], leaves, weights)])
    for a, b in zip(*results):  # fla's states are fp32 (the path casts the initial state): fp32-level agreement
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


# ---- the choice of SSD kernel (STATEX_SSD); the kernels themselves: tests/ops/test_ssd.py ---------------------


def test_cpu_tensors_stay_on_torch_whatever_the_ssd_kernel():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 40, 2, 16, generator=g)
    B, C = torch.randn(1, 40, 1, 16, generator=g), torch.randn(1, 40, 1, 16, generator=g)
    dt, A, D = torch.rand(1, 40, 2, generator=g), -torch.rand(2, generator=g), torch.randn(2, generator=g)
    h0 = torch.randn(1, 2, 16, 16, generator=g)
    y_ref, final_ref = chunk_ssd(x, dt, A, B, C, D, initial_state=h0)
    for kernel in ("triton", "fla"):
        with runtime.use(ssd_kernel=kernel):
            y, final = dispatch.ssd_chunk(x, dt, A, B, C, D, h0)
        assert torch.equal(y, y_ref) and torch.equal(final, final_ref)  # CPU tensors: the torch path itself


def test_conv_silu_runs_the_torch_path_for_cpu_tensors_and_the_torch_backend():
    calls = []

    def torch_path():
        calls.append(1)
        return "torch"

    x, weight = torch.randn(1, 5, 3), torch.randn(3, 4)
    assert dispatch.conv_silu(x, weight, None, torch_path) == "torch"  # a CPU tensor
    with runtime.use(backend="torch"):
        assert dispatch.conv_silu(x, weight, None, torch_path) == "torch"
    assert len(calls) == 2


# ---- CUDA: the gated norm through fla's fused kernels ------------------------------------------------------------

NORM_SHAPES = {  # (channels, weight dim, group size, norm before gate)
    "gla-1.3b": (2048, 512, 512, True),  # 4 heads of 512, one weight shared by the heads
    "gla-1.3b-statex": (2048, 2048, 2048, True),  # the merged head
    "mamba2-1.3b": (4096, 4096, 4096, False),
    "mamba2-groups": (4096, 4096, 2048, False),
}


@requires_cuda
@pytest.mark.parametrize("shape", list(NORM_SHAPES))
def test_cuda_gated_norm_matches_torch(shape):
    from statex.models.layers import GroupedGatedRMSNorm

    width, weight_dim, group, before = NORM_SHAPES[shape]
    norm = GroupedGatedRMSNorm(weight_dim, group, eps=1e-6, norm_before_gate=before).cuda()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x, gate = torch.randn(2, 300, width, device="cuda"), torch.randn(2, 300, width, device="cuda")
    errors = run_both(lambda x, gate: (norm(x, gate),), [x, gate])
    assert max(errors.values()) < TOLERANCE, errors
