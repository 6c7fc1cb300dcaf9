"""Every GLA implementation against the float64 reference: the chunked torch form == per-token recurrence ==
one-token step == fla's published naive recurrence (values and gradients, odd lengths, strong decay, initial
states, pieces); a head served as sub-heads (statex.ops.gla.split) == the whole head; and on CUDA fla's kernels
through statex.runtime.dispatch against the torch path (skipped without CUDA and flash-linear-attention)."""
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import gla_inputs, largest_saved_tensor, weighted_grads
from fast_path import TOLERANCE, assert_step_close, requires_cuda, run_both
from statex import runtime
from statex.ops.gla import chunk_gla, naive_recurrent_gla, recurrent_gla_step
from statex.ops.gla.split import block_size, split_heads_gla, torch_gla_kernel, torch_gla_step_kernel
from statex.runtime import dispatch


def make_inputs(B=2, T=75, H=3, K=16, V=8, decay_scale=1.0, dtype=torch.float64):
    q = torch.randn(B, T, H, K, dtype=dtype)
    k = torch.randn(B, T, H, K, dtype=dtype)
    v = torch.randn(B, T, H, V, dtype=dtype)
    g = F.logsigmoid(torch.randn(B, T, H, K, dtype=dtype) * decay_scale)
    h0 = torch.randn(B, H, K, V, dtype=dtype)
    return q, k, v, g, h0


# factor_limit None: these inputs' moderate decay takes the factored in-chunk form; 0: the sub-chunk form
PATHS = pytest.mark.parametrize("factor_limit", [None, 0.0], ids=["factored", "sub-chunk"])


@pytest.mark.parametrize("T", [1, 15, 16, 64, 75, 130])
@pytest.mark.parametrize("with_state", [False, True])
@PATHS
def test_chunk_matches_naive_forward(T, with_state, factor_limit):
    q, k, v, g, h0 = make_inputs(T=T)
    h0 = h0 if with_state else None
    o_ref, s_ref = naive_recurrent_gla(q, k, v, g, initial_state=h0)
    o, s = chunk_gla(q, k, v, g, initial_state=h0, factor_limit=factor_limit)
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s, s_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("chunk_size,sub_chunk", [(64, 16), (32, 8), (16, 16)])
@PATHS
def test_chunk_gradients_match_naive(chunk_size, sub_chunk, factor_limit):
    inputs = [x.requires_grad_() for x in make_inputs(T=53)]
    q, k, v, g, h0 = inputs
    o_ref, s_ref = naive_recurrent_gla(q, k, v, g, initial_state=h0)
    w_o, w_s = torch.randn_like(o_ref), torch.randn_like(s_ref)
    ref_grads = torch.autograd.grad((o_ref * w_o).sum() + (s_ref * w_s).sum(), inputs)
    o, s = chunk_gla(q, k, v, g, initial_state=h0, chunk_size=chunk_size, sub_chunk=sub_chunk,
                     factor_limit=factor_limit)
    grads = torch.autograd.grad((o * w_o).sum() + (s * w_s).sum(), inputs)
    for name, a, b in zip("qkvg", grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"grad of {name}")


def test_strong_decay_is_stable():
    # per-step log decay down to -60: a chunk spans exp(-3840); a naive q*exp(b) / exp(b) split would overflow
    q, k, v, _, h0 = make_inputs(T=150)
    g = -torch.rand_like(q) * 60
    g.requires_grad_()
    o_ref, s_ref = naive_recurrent_gla(q, k, v, g, initial_state=h0)
    o, s = chunk_gla(q, k, v, g, initial_state=h0)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    (grad,) = torch.autograd.grad(o.sum(), g)
    assert torch.isfinite(grad).all()
    o32, _ = chunk_gla(*(x.float() for x in (q, k, v, g.detach())), initial_state=h0.float())
    torch.testing.assert_close(o32.double(), o_ref, rtol=1e-4, atol=1e-4)


def test_factored_form_in_fp32_up_to_its_limit():
    # total in-chunk log decay just under the fp32 limit: factors reach exp(+-40), results still fp32-accurate
    from statex.ops.gla.chunk import FACTOR_LIMIT

    q, k, v, _, h0 = make_inputs(T=96)
    g = torch.full_like(q, -0.99 * FACTOR_LIMIT[torch.float32] / 32)
    o_ref, s_ref = naive_recurrent_gla(q, k, v, g, initial_state=h0)
    args = [x.float().requires_grad_() for x in (q, k, v, g)]
    o, s = chunk_gla(*args, initial_state=h0.float(), chunk_size=32)
    torch.testing.assert_close(o.double(), o_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s.double(), s_ref, rtol=1e-4, atol=1e-4)
    assert all(torch.isfinite(x).all() for x in torch.autograd.grad(o.sum(), args))


def test_pieces_with_carried_state_equal_one_pass():
    q, k, v, g, h0 = make_inputs(T=101)
    o_full, s_full = chunk_gla(q, k, v, g, initial_state=h0)
    o1, s1 = chunk_gla(q[:, :37], k[:, :37], v[:, :37], g[:, :37], initial_state=h0)
    o2, s2 = chunk_gla(q[:, 37:], k[:, 37:], v[:, 37:], g[:, 37:], initial_state=s1)
    torch.testing.assert_close(torch.cat([o1, o2], 1), o_full, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s2, s_full, rtol=1e-10, atol=1e-10)


def test_step_matches_naive():
    q, k, v, g, h0 = make_inputs(T=9)
    o_ref, s_ref = naive_recurrent_gla(q, k, v, g, initial_state=h0)
    state, outs = h0.clone(), []
    for t in range(q.shape[1]):
        o, state = recurrent_gla_step(q[:, t], k[:, t], v[:, t], g[:, t], state, scale=q.shape[-1] ** -0.5)
        outs.append(o)
    torch.testing.assert_close(torch.stack(outs, 1), o_ref)
    torch.testing.assert_close(state, s_ref)


def test_fp32_inputs_fp32_output():
    q, k, v, g, h0 = make_inputs(T=40, dtype=torch.float32)
    o, s = chunk_gla(q, k, v, g, initial_state=h0)
    assert o.dtype == torch.float32 and s.dtype == torch.float32
    o_ref, _ = naive_recurrent_gla(*(x.double() for x in (q, k, v, g)), initial_state=h0.double())
    torch.testing.assert_close(o.double(), o_ref, rtol=1e-4, atol=1e-4)


def _load_fla_naive():
    """fla's pure-torch GLA recurrence, loaded by file path (importing the fla package needs Triton)."""
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("fla-core is not installed (pip install -e '.[test]')")
    path = Path(list(spec.submodule_search_locations)[0]) / "ops" / "gla" / "naive.py"
    module_spec = importlib.util.spec_from_file_location("fla_gla_naive", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.naive_recurrent_gla


def test_matches_fla_published_recurrence():
    fla_naive = _load_fla_naive()
    q, k, v, g, h0 = make_inputs(T=70, H=2, K=8, V=12, dtype=torch.float32)
    o_fla, s_fla = fla_naive(q, k, v, g, initial_state=h0, output_final_state=True)
    o, s = chunk_gla(q, k, v, g, initial_state=h0)
    torch.testing.assert_close(o, o_fla, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s, s_fla, rtol=1e-4, atol=1e-4)  # both [B, H, K, V]


def test_memory_is_linear_no_quadratic_tensor():
    """No [T, T] tensor: the largest tensor saved for backward grows linearly with T."""
    def biggest_saved(T):
        q, k, v, g, _ = make_inputs(B=1, T=T, H=1, K=8, V=8, dtype=torch.float32)
        return largest_saved_tensor(chunk_gla, q.requires_grad_(), k, v, g)

    assert biggest_saved(4096) <= 2 * biggest_saved(2048) + 64


# ---- a head as sub-heads (statex.ops.gla.split) ---------------------------------------------------------------------


@pytest.mark.parametrize("blocks", [(8, 16), (16, 48), (32, 12), (8, 24)])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("state_v_first", [False, True])
def test_split_heads_equal_merged_head(blocks, with_state, state_v_first):
    q, k, v, g, s0 = gla_inputs()
    if state_v_first:
        s0 = s0.transpose(-1, -2).contiguous()
    inputs = [t.requires_grad_() for t in (q, k, v, g, s0)]
    scale = 32**-0.5
    ref = torch_gla_kernel(*inputs[:4], scale, inputs[4] if with_state else None, state_v_first)
    got = split_heads_gla(torch_gla_kernel, *inputs[:4], scale, inputs[4] if with_state else None, state_v_first,
                          max_key_block=blocks[0], max_value_block=blocks[1])
    assert got[1].shape == ref[1].shape
    torch.testing.assert_close(got[0], ref[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-10, atol=1e-10)
    weights = [torch.randn_like(ref[0]), torch.randn_like(ref[1])]
    used = inputs if with_state else inputs[:4]
    for a, b in zip(weighted_grads(got, used, weights), weighted_grads(ref, used, weights)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_split_heads_decode_step_equals_merged_step():
    q, k, v, g, s0 = gla_inputs(T=1)
    ref = torch_gla_step_kernel(q, k, v, g, 0.2, s0, False)
    got = split_heads_gla(torch_gla_step_kernel, q, k, v, g, 0.2, s0, max_key_block=8, max_value_block=16)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-10, atol=1e-10)


def test_block_sizes():
    assert block_size(256, 256) == 256
    assert block_size(1024, 256) == 256
    assert block_size(2048, 512) == 512
    assert block_size(96, 64) == 48
    assert block_size(1031, 256) is None  # a prime: no block between MIN_BLOCK and the limit
    with pytest.raises(ValueError, match="no block size"):
        q, k, v, g, _ = gla_inputs(K=17 * 19, V=8, T=3)
        split_heads_gla(torch_gla_kernel, q, k, v, g, 1.0, max_key_block=16)


# ---- CUDA: fla's kernels through the runtime's dispatch against the torch path ------------------------------------

CUDA_SHAPES = {  # (heads, head key dim, head value dim)
    "gla-1.3b": (4, 256, 512),
    "gla-1.3b-statex": (1, 1024, 2048),  # 4 heads merged into 1
}


@requires_cuda
@pytest.mark.parametrize("shape", list(CUDA_SHAPES))
@pytest.mark.parametrize("length", [300, 1000])
@pytest.mark.parametrize("with_state", [False, True])
def test_cuda_chunk_matches_torch(shape, length, with_state):
    H, K, V = CUDA_SHAPES[shape]
    B, dev = 2, "cuda"
    q, k = torch.randn(B, length, H, K, device=dev), torch.randn(B, length, H, K, device=dev)
    v = torch.randn(B, length, H, V, device=dev)
    g = F.logsigmoid(torch.randn(B, length, H, K, device=dev)) / 16
    inputs = [q, k, v, g] + ([torch.randn(B, H, K, V, device=dev)] if with_state else [])

    def fn(q, k, v, g, s0=None):
        return dispatch.gla_chunk(q, k, v, g, K**-0.5, s0)

    errors = run_both(fn, inputs, float_args=(3, 4))  # decays and states stay fp32, as in the mixer
    assert max(errors.values()) < TOLERANCE, errors


@requires_cuda
@pytest.mark.parametrize("shape", list(CUDA_SHAPES))
def test_cuda_decode_step_matches_torch(shape):
    H, K, V = CUDA_SHAPES[shape]
    B, dev = 3, "cuda"
    q, k = (torch.randn(B, H, K, device=dev, dtype=torch.bfloat16) for _ in range(2))  # as in a bf16 model
    g = F.logsigmoid(torch.randn(B, H, K, device=dev)) / 16
    v, s0 = torch.randn(B, H, V, device=dev, dtype=torch.bfloat16), torch.randn(B, H, K, V, device=dev)
    with torch.no_grad():
        with runtime.use(backend="fla"):
            fast = dispatch.gla_step(q, k, v, g, s0, K**-0.5)
        with runtime.use(backend="torch"):
            ref = dispatch.gla_step(q, k, v, g, s0, K**-0.5)
    assert_step_close(fast, ref)
