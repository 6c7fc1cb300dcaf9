"""Whole models: pieces with carried state == one pass, token-by-token steps == one pass, gradients,
the GLA layer against a per-token reference written from the GLA paper's definition, generation == repeated full forwards."""
import math

import pytest
import torch
import torch.nn.functional as F

import statex
from conftest import gla_layer_from_spec, randomize_, tiny_gla_config, tiny_mamba2_config


@torch.no_grad()
def test_pieces_equal_one_pass(tiny_model):
    ids = torch.randint(0, 61, (2, 83))
    full = tiny_model(ids).logits
    state, parts = None, []
    for lo, hi in [(0, 1), (1, 30), (30, 31), (31, 83)]:
        out = tiny_model(ids[:, lo:hi], state=state, use_cache=True)
        state = out.state
        parts.append(out.logits)
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-10, atol=1e-10)


@torch.no_grad()
def test_token_steps_equal_one_pass(tiny_model):
    ids = torch.randint(0, 61, (3, 21))
    full = tiny_model(ids).logits
    state = tiny_model.empty_state(3)
    steps = []
    for t in range(ids.shape[1]):
        out = tiny_model(ids[:, t:t + 1], state=state)
        state = out.state
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-10, atol=1e-10)


def test_gradients_of_chunked_model_match_per_token_model(tiny_model):
    ids = torch.randint(0, 61, (2, 40))
    loss = tiny_model(ids, labels=ids).loss
    grads = torch.autograd.grad(loss, list(tiny_model.parameters()))
    # the same loss computed one token at a time through the recurrent step path
    state, logits = tiny_model.empty_state(2), []
    for t in range(ids.shape[1]):
        out = tiny_model(ids[:, t:t + 1], state=state)
        state = out.state
        logits.append(out.logits)
    logits = torch.cat(logits, 1)
    loss_steps = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    grads_steps = torch.autograd.grad(loss_steps, list(tiny_model.parameters()))
    torch.testing.assert_close(loss, loss_steps)
    for (name, _), a, b in zip(tiny_model.named_parameters(), grads, grads_steps):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=name)
    assert all(g.abs().sum() > 0 for g in grads)


def test_gradient_checkpointing_gives_same_gradients(tiny_model):
    ids = torch.randint(0, 61, (2, 30))
    tiny_model.train()
    ref = torch.autograd.grad(tiny_model(ids, labels=ids).loss, list(tiny_model.parameters()))
    tiny_model.gradient_checkpointing = True
    got = torch.autograd.grad(tiny_model(ids, labels=ids).loss, list(tiny_model.parameters()))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("short_conv", [False, True])
@pytest.mark.parametrize("heads", [1, 2, 4])
def test_gla_mixer_matches_spec_reference(short_conv, heads):
    model = randomize_(statex.build_model(tiny_gla_config(num_heads=heads, use_short_conv=short_conv),
                                          dtype=torch.float64))
    mixer = model.blocks[0].attn
    x = torch.randn(2, 45, 32, dtype=torch.float64)
    got, _ = mixer(x)
    torch.testing.assert_close(got, gla_layer_from_spec(mixer, x), rtol=1e-8, atol=1e-9)


def test_mamba2_dt_limit_is_applied_in_both_paths():
    config = tiny_mamba2_config()
    for spec in config.layers:
        spec.dt_limit = (0.05, 0.2)
    model = statex.build_model(config, dtype=torch.float64).eval()
    ids = torch.randint(0, 61, (1, 12))
    with torch.no_grad():
        full = model(ids).logits
        state = model.empty_state(1)
        steps = []
        for t in range(12):
            out = model(ids[:, t:t + 1], state=state)
            state = out.state
            steps.append(out.logits)
        torch.testing.assert_close(torch.cat(steps, 1), full)
        unclamped = statex.build_model(tiny_mamba2_config(), dtype=torch.float64)
        unclamped.load_state_dict(model.state_dict())
        assert not torch.allclose(unclamped(ids).logits, full)


@torch.no_grad()
def test_greedy_generation_equals_argmax_of_full_forwards(tiny_model):
    prompt = torch.randint(0, 61, (2, 9))
    generated = tiny_model.generate(prompt, max_new_tokens=12, prefill_chunk=4)
    assert generated.shape == (2, 21)
    assert torch.equal(generated[:, :9], prompt)
    seq = prompt
    for _ in range(12):
        nxt = tiny_model(seq).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    assert torch.equal(generated, seq)


@torch.no_grad()
def test_step_runner_on_fixed_buffers_equals_plain_steps(tiny_model):
    """The decoding step that a CUDA graph captures (fixed input and state buffers, updated in place), run
    eagerly: same logits and states as plain steps, same buffers throughout, the caller's state untouched."""
    from statex.models.generation import StepRunner

    ids = torch.randint(0, 61, (3, 12))
    _, state = tiny_model.prefill(ids[:, :5])
    before = [t.clone() for t in state.tensors()]
    runner = StepRunner(tiny_model, state)
    buffers = [t.data_ptr() for t in runner.state.tensors()]
    plain = state
    for t in range(5, 12):
        got = runner(ids[:, t]).clone()
        out = tiny_model(ids[:, t:t + 1], state=plain, use_cache=True)
        plain = out.state
        torch.testing.assert_close(got, out.logits[:, -1], rtol=1e-12, atol=1e-12)
    assert [t.data_ptr() for t in runner.state.tensors()] == buffers
    for a, b in zip(runner.state.tensors(), plain.tensors()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert all(torch.equal(a, b) for a, b in zip(state.tensors(), before))


def test_cuda_graph_generation_needs_a_cuda_model(tiny_model):
    with pytest.raises(ValueError, match="CUDA"):
        tiny_model.generate(torch.randint(0, 61, (1, 4)), max_new_tokens=3, cuda_graph=True)


def test_cuda_graph_is_the_default_only_for_cuda_on_fla_with_enough_tokens(monkeypatch):
    from statex.models.generation import GRAPH_MIN_TOKENS, graph_by_default
    from statex import runtime
    from statex.runtime import dispatch

    monkeypatch.setattr(dispatch, "fla_available", lambda: True)
    assert graph_by_default(True, GRAPH_MIN_TOKENS)
    assert not graph_by_default(True, GRAPH_MIN_TOKENS - 1)
    assert not graph_by_default(False, 1000)
    with runtime.use(backend="torch"):
        assert not graph_by_default(True, 1000)
    monkeypatch.setattr(dispatch, "fla_available", lambda: False)
    assert not graph_by_default(True, 1000)


@torch.no_grad()
def test_sampling_is_seeded_and_topk1_is_greedy(tiny_model):
    prompt = torch.randint(0, 61, (2, 5))
    a = tiny_model.generate(prompt, 10, temperature=1.0, seed=3)
    b = tiny_model.generate(prompt, 10, temperature=1.0, seed=3)
    assert torch.equal(a, b)
    greedy = tiny_model.generate(prompt, 10)
    assert torch.equal(tiny_model.generate(prompt, 10, temperature=0.7, top_k=1, seed=1), greedy)
    assert torch.equal(tiny_model.generate(prompt, 10, temperature=0.7, top_p=1e-9, seed=1), greedy)


def test_top_p_keeps_the_smallest_set_reaching_p():
    from statex.models.generation import sample_next_token

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    seen = {int(sample_next_token(logits, 1.0, top_p=0.7, generator=torch.Generator().manual_seed(s)))
            for s in range(200)}
    assert seen == {0, 1}


@torch.no_grad()
def test_stop_tokens_end_generation(tiny_model):
    prompt = torch.randint(0, 61, (1, 6))
    greedy = tiny_model.generate(prompt, 8)
    stop = int(greedy[0, 8])  # the third generated token
    out = tiny_model.generate(prompt, 8, stop_tokens=[stop])
    first = (greedy[0, 6:] == stop).nonzero()[0].item()
    assert out.shape[1] == 6 + first + 1 and out[0, -1] == stop


@torch.no_grad()
def test_state_shapes_follow_each_layers_spec():
    config = tiny_gla_config(n_layer=3)
    config.layers[1] = statex.GLASpec(num_heads=1, key_dim=16, value_dim=32, use_short_conv=True)
    model = statex.build_model(config)
    state = model(torch.randint(0, 61, (2, 5)), use_cache=True).state
    assert [tuple(s.recurrent.shape) for s in state.layers] == [(2, 2, 8, 16), (2, 1, 16, 32), (2, 2, 8, 16)]
    m_config = tiny_mamba2_config(n_layer=2)
    m_config.layers[0] = statex.Mamba2Spec(d_state=32, nheads=8, headdim=8, ngroups=2)
    m_model = statex.build_model(m_config)
    m_state = m_model(torch.randint(0, 61, (2, 5)), use_cache=True).state
    assert [tuple(s.ssm.shape) for s in m_state.layers] == [(2, 8, 8, 32), (2, 8, 8, 8)]
    assert [tuple(s.conv.shape) for s in m_state.layers] == [(2, 64 + 2 * 2 * 32, 3), (2, 64 + 2 * 2 * 8, 3)]


def test_bf16_forward_runs_and_stays_close():
    model = statex.build_model(tiny_mamba2_config(), seed=1)
    ids = torch.randint(0, 61, (1, 70))
    with torch.no_grad():
        ref = model(ids).logits
        low = model.to(torch.bfloat16)(ids).logits.float()
    assert math.isfinite(low.abs().max().item())
    assert (low - ref).abs().max() < 0.1 * ref.abs().max() + 0.05


def test_build_model_seed_is_deterministic():
    a = statex.build_model(tiny_gla_config(), seed=7)
    b = statex.build_model(tiny_gla_config(), seed=7)
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), n


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("length", [11, 2])  # 2: shorter than the state (kernel_size - 1 = 3)
def test_short_conv_matches_conv1d_values_and_gradients(with_state, length):
    from statex.models.layers import CausalConv1d

    conv = CausalConv1d(6, 4, bias=True).double()
    x = torch.randn(2, length, 6, dtype=torch.float64, requires_grad=True)
    state = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True) if with_state else None
    y, new_state = conv(x, state)
    history = state if with_state else torch.zeros(2, 6, 3, dtype=torch.float64)
    padded = torch.cat([history, x.transpose(1, 2)], dim=-1)
    ref = F.silu(F.conv1d(padded, conv.weight, conv.bias, groups=6)).transpose(1, 2)
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(new_state, padded[..., -3:])
    inputs = [x, conv.weight, conv.bias] + ([state] if with_state else [])
    w = torch.randn_like(y)
    got = torch.autograd.grad((y * w).sum(), inputs)
    expected = torch.autograd.grad((ref * w).sum(), inputs)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
