import os

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

import statex  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_gla_config(**overrides):
    kwargs = dict(vocab_size=61, d_model=32, n_layer=2, num_heads=2, use_short_conv=True)
    kwargs.update(overrides)
    return statex.gla_config(**kwargs)


def tiny_mamba2_config(**overrides):
    kwargs = dict(vocab_size=61, d_model=32, n_layer=2, d_state=8, headdim=8, ngroups=2)
    kwargs.update(overrides)
    return statex.mamba2_config(**kwargs)


def randomize_(model, scale=0.2):
    """Perturb the parameters that fresh init sets to constants (norms, D) so that tests see them."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm_f.weight") or "g_norm" in name \
                    or name.endswith(".D") or name.endswith("norm.weight"):
                p.add_(torch.randn_like(p) * scale)
    return model


@pytest.fixture(params=["gla", "mamba2"])
def tiny_model(request):
    config = tiny_gla_config() if request.param == "gla" else tiny_mamba2_config()
    return randomize_(statex.build_model(config, dtype=torch.float64)).eval()


def gla_layer_from_spec(mixer, x):
    """GLA written directly from its definition (Yang et al., 2024), one token at a time, float64, with the mixer's weights."""
    spec = mixer.spec
    H, dk, dv = spec.num_heads, spec.head_k_dim, spec.head_v_dim
    W = {n: p.detach() for n, p in mixer.named_parameters()}

    def short_conv(seq, name):  # causal depthwise conv then SiLU
        w = W[f"{name}.weight"][:, 0, :]  # [D, K]
        K = w.shape[1]
        padded = torch.cat([seq.new_zeros(seq.shape[0], K - 1, seq.shape[2]), seq], 1)
        out = torch.stack([(padded[:, t:t + K] * w.T).sum(1) for t in range(seq.shape[1])], 1)
        return F.silu(out)

    q, k, v = x @ W["q_proj.weight"].T, x @ W["k_proj.weight"].T, x @ W["v_proj.weight"].T
    if spec.use_short_conv:
        q, k, v = short_conv(q, "q_conv1d"), short_conv(k, "k_conv1d"), short_conv(v, "v_conv1d")
    gk = F.logsigmoid(x @ W["gk_proj.0.weight"].T @ W["gk_proj.1.weight"].T + W["gk_proj.1.bias"]) / 16
    g = x @ W["g_proj.weight"].T
    Bsz, T, _ = x.shape
    S = x.new_zeros(Bsz, H, dk, dv)
    outs = []
    for t in range(T):
        qt, kt, gt = (a[:, t].view(Bsz, H, dk) for a in (q, k, gk))
        vt = v[:, t].view(Bsz, H, dv)
        S = torch.exp(gt)[..., None] * S + kt[..., :, None] * vt[..., None, :]
        o = torch.einsum("bhk,bhkv->bhv", qt * dk ** -0.5, S)
        o = o / torch.sqrt(o.pow(2).mean(-1, keepdim=True) + spec.norm_eps) * W["g_norm_swish_gate.weight"]
        o = o.reshape(Bsz, H * dv) * F.silu(g[:, t])
        outs.append(o @ W["o_proj.weight"].T)
    return torch.stack(outs, 1)


def largest_saved_tensor(fn, *args, **kwargs) -> int:
    """numel of the largest tensor autograd saves for backward while ``fn(*args, **kwargs)`` runs."""
    biggest = 0

    def pack(t):
        nonlocal biggest
        biggest = max(biggest, t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args, **kwargs)
    return biggest


def weighted_grads(outputs, inputs, weights):
    """Gradients of sum(output * weight) w.r.t. inputs: a fixed random projection of every output."""
    loss = sum((o * w).sum() for o, w in zip(outputs, weights))
    return torch.autograd.grad(loss, inputs)


def write_corpus(path, n=40, seed=0):
    """A small JSONL corpus of random words."""
    import json

    import numpy as np

    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "green", "sky"]
    with open(path, "w") as f:
        for _ in range(n):
            f.write(json.dumps({"text": " ".join(rng.choice(words, rng.integers(5, 40)))}) + "\n")
    return path


def gla_inputs(B=2, T=45, H=2, K=32, V=48, dtype=torch.float64):
    """Random GLA inputs (q, k, v, log decays g, initial state [B, H, K, V]) with moderate decay."""
    q, k = torch.randn(B, T, H, K, dtype=dtype), torch.randn(B, T, H, K, dtype=dtype)
    v = torch.randn(B, T, H, V, dtype=dtype)
    g = F.logsigmoid(torch.randn(B, T, H, K, dtype=dtype)) / 4
    s0 = torch.randn(B, H, K, V, dtype=dtype)
    return q, k, v, g, s0
