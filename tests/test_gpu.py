"""The CUDA fast path (fla's Triton kernels through statex.ops.backends) against the pure-torch path in fp32:
outputs, final states and gradients on GLA-1.3B and Mamba2-1.3B head shapes, original and StateX-expanded,
lengths that are not chunk multiples, with and without an initial state; the decode step; and generation
with the fast path equal to generation with the torch path; a training forward from a carried state, a left-padded
batch with ``attention_mask``, and ``statex.train`` with a weighted mixture and state passing. Skipped without CUDA and flash-linear-attention
(CI has neither); run on a GPU machine with ``pytest tests/test_gpu.py``."""
import math

import pytest
import torch
import torch.nn.functional as F

import statex
from statex.ops import backends

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or not backends.fla_available(),
                                reason="needs CUDA and flash-linear-attention")
TOLERANCE = 1e-2  # relative error ||fast - ref|| / ||ref|| allowed for bf16 inputs


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def run_both(fn, inputs: list[torch.Tensor], fast_dtype=torch.bfloat16, float_args=(), noise: bool = False):
    """fn on the fla path with inputs cast to fast_dtype, and on the torch path in fp32 (the same rounded
    values, upcast). Returns {name: relative error} for outputs and input gradients; with noise=True also
    {name: relative change} that rounding the inputs to fast_dtype alone causes in the fp32 torch path."""
    fast_in = [x.to(fast_dtype if i not in float_args else torch.float32).detach().requires_grad_()
               for i, x in enumerate(inputs)]
    ref_in = [x.detach().float().requires_grad_() for x in fast_in]
    backends.set_backend("fla")
    try:
        fast = outputs_and_grads(fn, fast_in)
    finally:
        backends.set_backend("torch")
    try:
        ref = outputs_and_grads(fn, ref_in)
        exact = outputs_and_grads(fn, [x.detach().float().requires_grad_() for x in inputs]) if noise else None
    finally:
        backends.set_backend("auto")
    errors = {name: rel_err(fast[name], ref[name]) for name in ref}
    if not noise:
        return errors
    return errors, {name: rel_err(ref[name], exact[name]) for name in ref}


def outputs_and_grads(fn, inputs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """fn's outputs and the gradients of a fixed random projection of them w.r.t. every input."""
    outs = fn(*inputs)
    weights = torch.Generator(device=outs[0].device).manual_seed(1)
    loss = sum((o.float() * torch.randn(o.shape, device=o.device, generator=weights)).sum() for o in outs)
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    result = {f"out{i}": o.detach() for i, o in enumerate(outs)}
    result.update({f"grad{i}": g for i, g in enumerate(grads) if g is not None})
    return result


GLA_SHAPES = {  # (heads, head key dim, head value dim)
    "gla-1.3b": (4, 256, 512),
    "gla-1.3b-statex": (1, 1024, 2048),  # 4 heads merged into 1
}


@pytest.mark.parametrize("shape", list(GLA_SHAPES))
@pytest.mark.parametrize("length", [300, 1000])
@pytest.mark.parametrize("with_state", [False, True])
def test_gla_chunk_fast_path_matches_torch(shape, length, with_state):
    H, K, V = GLA_SHAPES[shape]
    B = 2
    dev = "cuda"
    q, k = torch.randn(B, length, H, K, device=dev), torch.randn(B, length, H, K, device=dev)
    v = torch.randn(B, length, H, V, device=dev)
    g = F.logsigmoid(torch.randn(B, length, H, K, device=dev)) / 16
    inputs = [q, k, v, g] + ([torch.randn(B, H, K, V, device=dev)] if with_state else [])

    def fn(q, k, v, g, s0=None):
        return backends.gla_chunk(q, k, v, g, K**-0.5, s0)

    errors = run_both(fn, inputs, float_args=(3, 4))  # decays and states stay fp32, as in the mixer
    print(shape, length, with_state, errors)
    assert max(errors.values()) < TOLERANCE, errors


SSD_SHAPES = {  # (heads, headdim, ngroups, d_state)
    "mamba2-1.3b": (8, 64, 1, 128),  # 8 of the 64 heads: the per-head math is the same
    "mamba2-1.3b-statex": (8, 64, 1, 512),  # d_state x4
    "groups": (8, 64, 2, 128),
}


@pytest.mark.parametrize("shape", list(SSD_SHAPES))
@pytest.mark.parametrize("length", [300, 1000])
@pytest.mark.parametrize("with_state", [False, True])
def test_ssd_chunk_fast_path_matches_torch(shape, length, with_state):
    _ssd_check(SSD_SHAPES[shape], length, with_state)


def _ssd_check(shape, length, with_state):
    H, P, G, N = shape
    B, dev = 2, "cuda"
    x = torch.randn(B, length, H, P, device=dev)
    dt = F.softplus(torch.randn(B, length, H, device=dev) - 3)
    A = -torch.rand(H, device=dev).mul(15).add(1)
    Bm, Cm = torch.randn(B, length, G, N, device=dev), torch.randn(B, length, G, N, device=dev)
    D = torch.randn(H, device=dev)
    inputs = [x, dt, A, Bm, Cm, D] + ([torch.randn(B, H, P, N, device=dev)] if with_state else [])

    def fn(x, dt, A, Bm, Cm, D, s0=None):
        return backends.ssd_chunk(x, dt, A, Bm, Cm, D, s0)

    # dt, A, D and states stay fp32, as in the mixer
    errors, noise = run_both(fn, inputs, float_args=(1, 2, 5, 6), noise=True)
    print(shape, length, with_state, backends._ssd_kernel, "errors", errors, "input-rounding noise", noise)
    # The gradient of A (grad2) is one number per head summed over batch x length x d_state terms of both
    # signs: cancellation makes its relative error large even when every term is accurate. It is held to
    # the error that rounding the inputs to bf16 causes in the fp32 reference itself (x3); all else to 1e-2.
    assert max(v for k, v in errors.items() if k != "grad2") < TOLERANCE, errors
    assert errors["grad2"] < max(TOLERANCE, 3 * noise["grad2"]), (errors, noise)


NORM_SHAPES = {  # (channels, weight dim, group size, norm before gate)
    "gla-1.3b": (2048, 512, 512, True),  # 4 heads of 512, one weight shared by the heads
    "gla-1.3b-statex": (2048, 2048, 2048, True),  # the merged head
    "mamba2-1.3b": (4096, 4096, 4096, False),
    "mamba2-groups": (4096, 4096, 2048, False),
}


@pytest.mark.parametrize("shape", list(NORM_SHAPES))
def test_gated_norm_fast_path_matches_torch(shape):
    from statex.models.layers import GroupedGatedRMSNorm

    width, weight_dim, group, before = NORM_SHAPES[shape]
    norm = GroupedGatedRMSNorm(weight_dim, group, eps=1e-6, norm_before_gate=before).cuda()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x, gate = torch.randn(2, 300, width, device="cuda"), torch.randn(2, 300, width, device="cuda")

    def fn(x, gate):
        return (norm(x, gate),)

    errors = run_both(fn, [x, gate])
    print("norm", shape, errors)
    assert max(errors.values()) < TOLERANCE, errors


def assert_step_close(fast, ref):
    """Both steps compute in fp32 (q, k, v of a bf16 model are upcast: one token's state dominates the cost), so
    output and state agree to fp32 rounding, not bf16's."""
    errors = {"output": rel_err(fast[0], ref[0]), "state": rel_err(fast[1], ref[1])}
    print("decode step", errors)
    assert fast[0].dtype == ref[0].dtype == torch.float32, (fast[0].dtype, ref[0].dtype)
    assert errors["output"] < 1e-4 and errors["state"] < 1e-4, errors


@pytest.mark.parametrize("shape", ["gla-1.3b", "gla-1.3b-statex"])
def test_gla_decode_step_matches_torch(shape):
    H, K, V = GLA_SHAPES[shape]
    B, dev = 3, "cuda"
    q, k = (torch.randn(B, H, K, device=dev, dtype=torch.bfloat16) for _ in range(2))  # as in a bf16 model
    g = F.logsigmoid(torch.randn(B, H, K, device=dev)) / 16
    v, s0 = torch.randn(B, H, V, device=dev, dtype=torch.bfloat16), torch.randn(B, H, K, V, device=dev)
    with torch.no_grad():
        backends.set_backend("fla")
        fast = backends.gla_step(q, k, v, g, s0, K**-0.5)
        backends.set_backend("torch")
        ref = backends.gla_step(q, k, v, g, s0, K**-0.5)
        backends.set_backend("auto")
    assert_step_close(fast, ref)


@pytest.mark.parametrize("d_state", [128, 512])
def test_ssd_decode_step_matches_torch(d_state):
    B, H, P, G, dev = 3, 8, 64, 1, "cuda"
    x = torch.randn(B, H, P, device=dev, dtype=torch.bfloat16)
    dt = F.softplus(torch.randn(B, H, device=dev))
    A = -torch.rand(H, device=dev).add(0.5)
    Bm, Cm = (torch.randn(B, G, d_state, device=dev, dtype=torch.bfloat16) for _ in range(2))
    D, s0 = torch.randn(H, device=dev), torch.randn(B, H, P, d_state, device=dev)
    with torch.no_grad():
        backends.set_backend("fla")
        fast = backends.ssd_step(x, dt, A, Bm, Cm, D, s0)
        backends.set_backend("torch")
        ref = backends.ssd_step(x, dt, A, Bm, Cm, D, s0)
        backends.set_backend("auto")
    assert_step_close(fast, ref)


def small_model(family: str, expanded: bool):
    if family == "gla":
        config = statex.gla_config(vocab_size=300, d_model=128, n_layer=3, num_heads=4, use_short_conv=True)
    else:
        config = statex.mamba2_config(vocab_size=300, d_model=128, n_layer=3, d_state=32, headdim=32, ngroups=2)
    model = statex.build_model(config, seed=0)
    if expanded:
        model = statex.expand(model, [1], mode="inherit" if family == "gla" else "preserve")
    return model.cuda().eval()


@pytest.mark.parametrize("family", ["gla", "mamba2"])
@pytest.mark.parametrize("expanded", [False, True])
def test_generation_fast_path_equals_torch_path(family, expanded):
    _generation_matches_torch_path(small_model(family, expanded))


def _generation_matches_torch_path(model):
    prompt = torch.randint(0, 300, (2, 100), generator=torch.Generator().manual_seed(1)).cuda()
    outputs, logits = {}, {}
    for name in ("fla", "torch"):
        backends.set_backend(name)
        try:
            with torch.no_grad():
                logits[name] = model(prompt).logits
                outputs[name] = model.generate(prompt, max_new_tokens=24)  # fla: CUDA graph by default
        finally:
            backends.set_backend("auto")
    assert rel_err(logits["fla"], logits["torch"]) < 1e-3
    assert torch.equal(outputs["fla"], outputs["torch"])


@pytest.mark.parametrize("family", ["gla", "mamba2"])
@pytest.mark.parametrize("expanded", [False, True])
def test_cuda_graph_generation_equals_eager(family, expanded):
    model = small_model(family, expanded)
    prompt = torch.randint(0, 300, (2, 50), generator=torch.Generator().manual_seed(2)).cuda()
    eager = model.generate(prompt, max_new_tokens=24, cuda_graph=False)
    graphed = model.generate(prompt, max_new_tokens=24, cuda_graph=True)
    default = model.generate(prompt, max_new_tokens=24)  # graphed by default on CUDA with fla
    assert torch.equal(graphed, eager)
    assert torch.equal(default, eager)


# ---- statex's own Triton SSD (STATEX_SSD=triton; docs/gpu.md) ------------------------------------------------------

OWN_SSD_SHAPES = {  # (heads, headdim, ngroups, d_state)
    "mamba2-1.3b": (8, 64, 1, 128),
    "mamba2-1.3b-statex": (8, 64, 1, 512),
    "groups-8": (16, 64, 8, 128),
    "groups-8-statex": (16, 64, 8, 512),
}


@pytest.mark.parametrize("shape", list(OWN_SSD_SHAPES))
@pytest.mark.parametrize("length", [300, 1000])
@pytest.mark.parametrize("with_state", [False, True])
def test_own_ssd_kernel_matches_torch(shape, length, with_state, monkeypatch):
    monkeypatch.setattr(backends, "_ssd_kernel", "triton")
    monkeypatch.setattr(backends, "_failed", set())  # run_both's backend "fla" makes a kernel failure raise
    _ssd_check(OWN_SSD_SHAPES[shape], length, with_state)


def test_own_ssd_kernel_generation_equals_torch_path(monkeypatch):
    monkeypatch.setattr(backends, "_ssd_kernel", "triton")
    for expanded in (False, True):
        _generation_matches_torch_path(small_model("mamba2", expanded))


# ---- statex's own Triton causal conv + SiLU (Mamba2's conv1d) ----------------------------------------------------

@pytest.mark.parametrize("channels,with_bias", [(4352, True), (200, False)])  # Mamba2-1.3B's x, B, C channels
@pytest.mark.parametrize("length", [300, 1000])
def test_conv_silu_kernel_matches_torch(channels, with_bias, length):
    def fn(x, weight, bias=None):
        def torch_path():
            pre = F.conv1d(F.pad(x.transpose(1, 2), (weight.shape[1] - 1, 0)), weight[:, None, :], bias,
                           groups=x.shape[-1])
            return F.silu(pre).transpose(1, 2)
        return (backends.conv_silu(x, weight, bias, torch_path),)

    inputs = [torch.randn(2, length, channels, device="cuda"), torch.randn(channels, 4, device="cuda") * 0.5]
    inputs += [torch.randn(channels, device="cuda")] if with_bias else []
    errors = run_both(fn, inputs, float_args=(1, 2))  # weights stay fp32, as under autocast
    assert max(errors.values()) < TOLERANCE, errors


# ---- carried states, left padding and weighted training through the fast kernels ----------------------------------

@pytest.mark.parametrize("family", ["gla", "mamba2"])
@pytest.mark.parametrize("expanded", [False, True])
def test_carried_state_fast_path_matches_torch(family, expanded):
    """A training forward from a detached carried state (state passing): logits, loss and every parameter's
    gradient on the fast path against the torch path, and the logits against one unbroken sequence."""
    model = small_model(family, expanded).train()
    ids = torch.randint(0, 300, (2, 517), generator=torch.Generator().manual_seed(3)).cuda()
    results = {}
    for name in ("fla", "torch"):
        backends.set_backend(name)  # "fla": a failing kernel raises instead of falling back
        try:
            model.zero_grad()
            with torch.no_grad():
                whole = model(ids).logits[:, 300:]
                carried = model(ids[:, :300], use_cache=True).state
            out = model(ids[:, 300:], state=carried, labels=ids[:, 300:])
            out.loss.backward()
            grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
            results[name] = (whole, out.logits.detach(), out.loss.detach(), grads)
        finally:
            backends.set_backend("auto")
    (whole, logits, loss, grads), (_, ref_logits, ref_loss, ref_grads) = results["fla"], results["torch"]
    assert rel_err(logits, whole) < 1e-3
    assert rel_err(logits, ref_logits) < 1e-3
    assert abs(float(loss - ref_loss)) < 1e-3 * float(ref_loss)
    assert rel_err(grads, ref_grads) < 5e-3


@pytest.mark.parametrize("family", ["gla", "mamba2"])
@pytest.mark.parametrize("expanded", [False, True])
def test_left_padded_batch_fast_path_equals_each_row_alone(family, expanded):
    """attention_mask through the fast kernels: a left-padded row's last logits and greedy continuation equal
    the same row run alone, unpadded (transformers' meaning of the mask)."""
    model = small_model(family, expanded)
    gen = torch.Generator().manual_seed(4)
    rows = [torch.randint(1, 300, (n,), generator=gen) for n in (100, 63)]
    ids = torch.zeros(2, 100, dtype=torch.long)
    mask = torch.zeros(2, 100, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, 100 - len(row):], mask[i, 100 - len(row):] = row, 1
    ids, mask = ids.cuda(), mask.cuda()
    backends.set_backend("fla")
    try:
        with torch.no_grad():
            last = model(ids, attention_mask=mask).logits[:, -1]
            batch = model.generate(ids, attention_mask=mask, max_new_tokens=16, stop_tokens=())[:, 100:]
            for i, row in enumerate(rows):
                alone = row[None].cuda()
                assert rel_err(last[i], model(alone).logits[0, -1]) < 1e-3
                assert torch.equal(batch[i], model.generate(alone, max_new_tokens=16, stop_tokens=())[0, len(row):])
    finally:
        backends.set_backend("auto")


def test_weighted_mixture_with_state_passing_trains_alike_on_both_paths(tmp_path):
    """statex.train on CUDA in bf16 with two MQAR lengths, a per-source loss weight and state passing: the fast
    kernels' loss curve follows the torch path's."""
    import json

    from statex.train.config import resolve_config

    config = statex.gla_config(vocab_size=300, d_model=128, n_layer=3, num_heads=4, use_short_conv=True)
    (tmp_path / "init").mkdir()
    (tmp_path / "init" / "config.json").write_text(json.dumps(config.to_dict()))
    synthetic = [{"kind": "mqar", "num_pairs": [2, 8], "keys": 64, "seq_len": 96, "loss_weight": 4.0},
                 {"kind": "mqar", "num_pairs": [8, 16], "keys": 64, "seq_len": 192}]
    losses = {}
    for name in ("fla", "torch"):
        run = resolve_config({}, dict(init=str(tmp_path / "init"), synthetic=synthetic, seq_len=192, batch_size=8,
                                      steps=12, lr=3e-3, warmup=2, log_every=1, out=str(tmp_path / name),
                                      progress=False, heldout_sequences=0, state_passing=0.9, precision="bf16",
                                      device="cuda", autotune="off", cache_dir=str(tmp_path / "cache")))
        backends.set_backend(name)
        try:
            statex.train(run)
        finally:
            backends.set_backend("auto")
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in rows if "loss" in r]
    assert len(losses["fla"]) == 12 and all(map(math.isfinite, losses["fla"]))
    assert max(abs(a - b) / b for a, b in zip(losses["fla"], losses["torch"])) < 3e-2, losses
