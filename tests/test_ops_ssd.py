"""Mamba2 SSD kernels: chunked form == per-token recurrence == one-token step, values and gradients,
odd lengths, groups, strong decay, initial states, pieces."""
import pytest
import torch
import torch.nn.functional as F

from conftest import largest_saved_tensor
from statex.ops.ssd import chunk_ssd, naive_recurrent_ssd, recurrent_ssd_step


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
