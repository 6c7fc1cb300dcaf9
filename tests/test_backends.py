"""The backend layer's math, on CPU: serving a large GLA head as sub-heads, and Mamba2's SSD through a GLA
kernel, both checked (values, final states, gradients) against the pure-torch ops in fp64; plus dispatch
and fallback behaviour. tests/test_gpu.py runs the same comparisons with fla's Triton kernels on CUDA."""
import warnings

import pytest
import torch
import torch.nn.functional as F

from statex.ops import backends
from statex.ops.gla import chunk_gla, recurrent_gla_step
from statex.ops.ssd import chunk_ssd, recurrent_ssd_step


def gla_inputs(B=2, T=45, H=2, K=32, V=48, dtype=torch.float64):
    q, k = torch.randn(B, T, H, K, dtype=dtype), torch.randn(B, T, H, K, dtype=dtype)
    v = torch.randn(B, T, H, V, dtype=dtype)
    g = F.logsigmoid(torch.randn(B, T, H, K, dtype=dtype)) / 4
    s0 = torch.randn(B, H, K, V, dtype=dtype)
    return q, k, v, g, s0


def torch_step_kernel(q, k, v, g, scale, initial_state, state_v_first):
    """recurrent_gla_step behind the GLAKernel signature ([B, 1, H, D] inputs)."""
    state = initial_state.transpose(-1, -2) if state_v_first else initial_state
    o, new = recurrent_gla_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], state, scale)
    return o.unsqueeze(1), new.transpose(-1, -2) if state_v_first else new


def grads(outputs, inputs, weights):
    loss = sum((o * w).sum() for o, w in zip(outputs, weights))
    return torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("blocks", [(8, 16), (16, 48), (32, 12), (8, 24)])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("state_v_first", [False, True])
def test_split_heads_equal_merged_head(blocks, with_state, state_v_first):
    q, k, v, g, s0 = gla_inputs()
    if state_v_first:
        s0 = s0.transpose(-1, -2).contiguous()
    inputs = [t.requires_grad_() for t in (q, k, v, g, s0)]
    scale = 32**-0.5
    ref = backends.torch_gla_kernel(*inputs[:4], scale, inputs[4] if with_state else None, state_v_first)
    got = backends.split_heads_gla(backends.torch_gla_kernel, *inputs[:4], scale,
                                   inputs[4] if with_state else None, state_v_first,
                                   max_key_block=blocks[0], max_value_block=blocks[1])
    assert got[1].shape == ref[1].shape
    torch.testing.assert_close(got[0], ref[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-10, atol=1e-10)
    weights = [torch.randn_like(ref[0]), torch.randn_like(ref[1])]
    used = inputs if with_state else inputs[:4]
    for a, b in zip(grads(got, used, weights), grads(ref, used, weights)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_split_heads_decode_step_equals_merged_step():
    q, k, v, g, s0 = gla_inputs(T=1)
    ref = torch_step_kernel(q, k, v, g, 0.2, s0, False)
    got = backends.split_heads_gla(torch_step_kernel, q, k, v, g, 0.2, s0, max_key_block=8, max_value_block=16)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-10, atol=1e-10)


def test_block_sizes():
    assert backends._block(256, 256) == 256
    assert backends._block(1024, 256) == 256
    assert backends._block(2048, 512) == 512
    assert backends._block(96, 64) == 48
    assert backends._block(1031, 256) is None  # a prime: no block between MIN_BLOCK and the limit
    with pytest.raises(ValueError, match="no block size"):
        q, k, v, g, _ = gla_inputs(K=17 * 19, V=8, T=3)
        backends.split_heads_gla(backends.torch_gla_kernel, q, k, v, g, 1.0, max_key_block=16)


def ssd_inputs(B=2, T=50, H=4, P=8, G=2, N=16, dtype=torch.float64):
    x = torch.randn(B, T, H, P, dtype=dtype)
    dt = F.softplus(torch.randn(B, T, H, dtype=dtype))
    A = -torch.rand(H, dtype=dtype).add(0.5)
    Bm, Cm = torch.randn(B, T, G, N, dtype=dtype), torch.randn(B, T, G, N, dtype=dtype)
    D = torch.randn(H, dtype=dtype)
    s0 = torch.randn(B, H, P, N, dtype=dtype)
    return x, dt, A, Bm, Cm, D, s0


@pytest.mark.parametrize("G", [1, 2, 4])
@pytest.mark.parametrize("key_block", [16, 8])
@pytest.mark.parametrize("with_state", [False, True])
def test_ssd_through_gla_kernel_equals_chunk_ssd(G, key_block, with_state):
    inputs = [t.requires_grad_() for t in ssd_inputs(G=G)]
    state = inputs[6] if with_state else None
    ref = chunk_ssd(*inputs[:6], initial_state=state, chunk_size=16)
    got = backends.ssd_as_gla(backends.torch_gla_kernel, *inputs[:6], initial_state=state,
                              max_key_block=key_block)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-10, atol=1e-10)
    weights = [torch.randn_like(ref[0]), torch.randn_like(ref[1])]
    used = inputs if with_state else inputs[:6]
    for name, a, b in zip(["x", "dt", "A", "B", "C", "D", "state"], grads(got, used, weights),
                          grads(ref, used, weights)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"grad of {name}")


def test_ssd_decode_step_through_gla_kernel():
    x, dt, A, Bm, Cm, D, s0 = ssd_inputs(T=1)
    ref = recurrent_ssd_step(x[:, 0], dt[:, 0], A, Bm[:, 0], Cm[:, 0], D, s0)
    got = backends.ssd_as_gla(torch_step_kernel, x, dt, A, Bm, Cm, D, s0, max_key_block=8)
    torch.testing.assert_close(got[0][:, 0], ref[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-10, atol=1e-10)


def test_cpu_tensors_run_the_torch_ops(monkeypatch):
    q, k, v, g, s0 = gla_inputs(dtype=torch.float32)
    for name in ("auto", "fla"):  # fla is only for CUDA tensors: CPU tensors never need it
        monkeypatch.setattr(backends, "_backend", name)
        o, s = backends.gla_chunk(q, k, v, g, 0.3, s0, 16)
        o_ref, s_ref = chunk_gla(q, k, v, g, scale=0.3, initial_state=s0, chunk_size=16)
        assert torch.equal(o, o_ref) and torch.equal(s, s_ref)
    x, dt, A, Bm, Cm, D, s0 = ssd_inputs(dtype=torch.float32)
    y, s = backends.ssd_chunk(x, dt, A, Bm, Cm, D, s0, 32)
    y_ref, s_ref = chunk_ssd(x, dt, A, Bm, Cm, D, initial_state=s0, chunk_size=32)
    assert torch.equal(y, y_ref) and torch.equal(s, s_ref)


def test_backend_names_are_checked(monkeypatch):
    with pytest.raises(ValueError, match="unknown backend"):
        backends.set_backend("cuda")
    monkeypatch.setattr(backends, "_backend", "triton")
    with pytest.raises(ValueError, match="STATEX_BACKEND"):
        backends.get_backend()


def test_a_failing_fast_kernel_falls_back_once_with_a_warning(monkeypatch):
    monkeypatch.setattr(backends, "_failed", set())
    monkeypatch.setattr(backends, "_warned", set())
    calls = []

    def broken():
        calls.append(1)
        raise RuntimeError("no kernel for this shape")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert backends._try_fla("op", (1, 2), broken, lambda: "torch") == "torch"
        assert backends._try_fla("op", (1, 2), broken, lambda: "torch") == "torch"
    assert len(calls) == 1  # the shape is remembered: no second attempt
    assert len([w for w in caught if "using the fallback path" in str(w.message)]) == 1
    monkeypatch.setattr(backends, "_backend", "fla")  # an explicit request for fla never hides its errors
    with pytest.raises(RuntimeError, match="no kernel"):
        backends._try_fla("op", (3,), broken, lambda: "torch")


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
    monkeypatch.setattr(backends, "_wants_fla", lambda *t: True)
    monkeypatch.setattr(backends, "_fla", {
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
        return backends.torch_gla_kernel(q, k, v, g, scale, initial_state, state_v_first)

    monkeypatch.setattr(backends, "_wants_fla", lambda *t: True)
    monkeypatch.setattr(backends, "_fla", {"chunk": stand_in})
    B, T, H, K, V = 2, 37, 1, 512, 24
    inputs = [torch.randn(B, T, H, K, dtype=torch.float64), torch.randn(B, T, H, K, dtype=torch.float64),
              torch.randn(B, T, H, V, dtype=torch.float64),
              F.logsigmoid(torch.randn(B, T, H, K, dtype=torch.float64)) / 8]
    if with_state:
        inputs.append(torch.randn(B, H, K, V, dtype=torch.float64))
    weights = [torch.randn(B, T, H, V, dtype=torch.float64), torch.randn(B, H, K, V, dtype=torch.float64)]
    results = []
    for fn in (backends.gla_chunk, lambda *a: chunk_gla(*a[:4], scale=a[4], initial_state=a[5])):
        leaves = [x.clone().requires_grad_() for x in inputs]
        o, final = fn(*leaves[:4], K**-0.5, leaves[4] if with_state else None)
        assert final.shape == (B, H, K, V) and final.is_contiguous()
        results.append([o, final, *grads([o, final], leaves, weights)])
    for a, b in zip(*results):  # fla's states are fp32 (the path casts the initial state): fp32-level agreement
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


# ---- the choice of SSD kernel (STATEX_SSD); the kernels themselves: tests/test_ssd_triton.py -------------------


def test_own_ssd_kernel_supported_shapes():
    from statex.ops.ssd.triton_chunk import supports  # imports no Triton until it runs

    x, B = torch.empty(1, 4, 8, 64), torch.empty(1, 4, 1, 128)
    assert supports(x, B)
    assert not supports(torch.empty(1, 4, 8, 48), B)  # head dimension not a power of two
    assert not supports(torch.empty(1, 4, 8, 256), B)  # head dimension above 128
    assert not supports(x, torch.empty(1, 4, 3, 128))  # heads not a multiple of groups


def test_the_ssd_kernel_choice_is_checked_and_cpu_tensors_stay_on_torch(monkeypatch):
    with pytest.raises(ValueError, match="unknown SSD kernel"):
        backends.set_ssd_kernel("cuda")
    monkeypatch.setattr(backends, "_ssd_kernel", "triton")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 40, 2, 16, generator=g)
    B, C = torch.randn(1, 40, 1, 16, generator=g), torch.randn(1, 40, 1, 16, generator=g)
    dt, A, D = torch.rand(1, 40, 2, generator=g), -torch.rand(2, generator=g), torch.randn(2, generator=g)
    h0 = torch.randn(1, 2, 16, 16, generator=g)
    y, final = backends.ssd_chunk(x, dt, A, B, C, D, h0)
    y_ref, final_ref = chunk_ssd(x, dt, A, B, C, D, initial_state=h0)
    assert torch.equal(y, y_ref) and torch.equal(final, final_ref)  # CPU tensors: the torch path itself
    monkeypatch.setattr(backends, "_ssd_kernel", "trition")  # a typo in STATEX_SSD is an error, not the default
    with pytest.raises(ValueError, match="STATEX_SSD='trition' is not one of fla, triton"):
        backends.ssd_chunk(x, dt, A, B, C, D, h0)


def test_conv_silu_runs_the_torch_path_for_cpu_tensors_and_the_torch_backend(monkeypatch):
    calls = []

    def torch_path():
        calls.append(1)
        return "torch"

    x, weight = torch.randn(1, 5, 3), torch.randn(3, 4)
    assert backends.conv_silu(x, weight, None, torch_path) == "torch"  # a CPU tensor
    monkeypatch.setattr(backends, "_backend", "torch")
    assert backends.conv_silu(x, weight, None, torch_path) == "torch"
    assert len(calls) == 2
