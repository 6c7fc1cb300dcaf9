"""The StateX surgery: layer selection, kept / reset / fresh tensors per mode, the math of the expanded layers,
the documented defects of the reference ablations, and the round trips."""
import math

import pytest
import torch
import torch.nn.functional as F

import statex
from conftest import gla_layer_from_spec, randomize_

VOCAB = 61


def gla_model(n_layer=4, heads=4, short_conv=True, d_model=64):
    config = statex.gla_config(VOCAB, d_model, n_layer, num_heads=heads, use_short_conv=short_conv)
    return randomize_(statex.build_model(config, dtype=torch.float64, seed=0)).eval()


def mamba2_model(n_layer=3, d_state=8, ngroups=2, d_model=32, bias=False):
    config = statex.mamba2_config(VOCAB, d_model, n_layer, d_state=d_state, headdim=8, ngroups=ngroups)
    for spec in config.layers:
        spec.bias = bias
    return randomize_(statex.build_model(config, dtype=torch.float64, seed=0)).eval()


# ---- layer selection ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec,n,expected", [
    ("every:6", 24, [0, 6, 12, 18]), ("every:1", 3, [0, 1, 2]), ("every:5", 3, [0]), ("0,6,12", 24, [0, 6, 12]),
    ([3, 1], 4, [1, 3]), (2, 4, [2]), ("-1", 4, [3]), ("all", 3, [0, 1, 2]), ("frac:0.25", 24, [0, 4, 8, 12, 16, 20]),
    ("frac:0.5", 4, [0, 2]), ("frac:1", 3, [0, 1, 2]), ("frac:0.01", 24, [0]),
])
def test_select_layers(spec, n, expected):
    assert statex.select_layers(spec, n) == expected


@pytest.mark.parametrize("spec,message", [
    ("every:0", "must be >= 1"), ("every:x", "cannot read"), ("0,24", "out of range"), ("-25", "out of range"),
    ("frac:0", "in \\(0, 1\\]"), ("frac:1.5", "in \\(0, 1\\]"), ("", "selects no layer"), ([], "selects no layer"),
    ("first", "cannot read"),
])
def test_select_layers_errors(spec, message):
    with pytest.raises(statex.StatexError, match=message):
        statex.select_layers(spec, 24)


# ---- GLA ---------------------------------------------------------------------------------------------------------

def test_input_model_is_untouched_and_seed_gives_same_bits():
    model = gla_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = statex.expand(model, "every:2", mode="reinit", seed=5)
    b = statex.expand(model, "every:2", mode="reinit", seed=5)
    c = statex.expand(model, "every:2", mode="reinit", seed=6)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.config.layers[0].num_heads == 4
    for k in a.state_dict():
        assert torch.equal(a.state_dict()[k], b.state_dict()[k]), k
    assert not torch.equal(a.state_dict()["model.layers.0.attn.q_proj.weight"],
                           c.state_dict()["model.layers.0.attn.q_proj.weight"])


def _assert_kept(old, new, names):
    for name in names:
        assert torch.equal(old.state_dict()[name], new.state_dict()[name]), name


def _untouched_names(model, layers, prefix):
    return [n for n in model.state_dict() if not any(n.startswith(f"{prefix}.layers.{i}.") for i in layers)]


def test_gla_reinit_tensors():
    model = gla_model()
    new = statex.expand(model, "every:2", mode="reinit", seed=0)
    assert [s.num_heads for s in new.config.layers] == [1, 4, 1, 4]
    _assert_kept(model, new, _untouched_names(model, [0, 2], "model"))
    for i in (0, 2):
        _assert_kept(model, new, [f"model.layers.{i}.{n}" for n in
                                  ("mlp_norm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")])
        sd = new.state_dict()
        assert torch.equal(sd[f"model.layers.{i}.attn_norm.weight"], torch.ones(64, dtype=torch.float64))
        assert torch.equal(sd[f"model.layers.{i}.attn.g_norm_swish_gate.weight"], torch.ones(64, dtype=torch.float64))
        assert torch.equal(sd[f"model.layers.{i}.attn.gk_proj.1.bias"], torch.zeros(32, dtype=torch.float64))
        for proj, (fan_out, fan_in) in {"q_proj": (32, 64), "k_proj": (32, 64), "v_proj": (64, 64),
                                         "g_proj": (64, 64), "o_proj": (64, 64), "gk_proj.0": (16, 64),
                                         "gk_proj.1": (32, 16)}.items():
            weight = sd[f"model.layers.{i}.attn.{proj}.weight"]
            bound = 2**-2.5 * math.sqrt(6 / (fan_in + fan_out))
            assert weight.abs().max() <= bound
            assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.15)
            assert not torch.equal(weight, model.state_dict()[f"model.layers.{i}.attn.{proj}.weight"])


def test_gla_inherit_tensors_and_keep_attn_norm():
    model = gla_model()
    new = statex.expand(model, [1], mode="inherit", heads=2)
    old_sd, sd = model.state_dict(), new.state_dict()
    attn = "model.layers.1.attn."
    for name in old_sd:
        if name.startswith(attn) and "g_norm" not in name:
            assert torch.equal(old_sd[name], sd[name]), name
    assert torch.equal(sd[attn + "g_norm_swish_gate.weight"], old_sd[attn + "g_norm_swish_gate.weight"].repeat(2))
    assert torch.equal(sd["model.layers.1.attn_norm.weight"], torch.ones(64, dtype=torch.float64))
    kept = statex.expand(model, [1], mode="inherit", heads=2, keep_attn_norm=True)
    assert torch.equal(kept.state_dict()["model.layers.1.attn_norm.weight"], old_sd["model.layers.1.attn_norm.weight"])


@pytest.mark.parametrize("mode,heads", [("reinit", 1), ("inherit", 1), ("inherit", 2)])
def test_expanded_gla_layer_is_a_genuine_gla(mode, heads):
    new = statex.expand(gla_model(), "every:2", mode=mode, heads=heads)
    mixer = new.blocks[0].attn
    assert mixer.num_heads == heads and mixer.scale == (32 // heads) ** -0.5
    x = torch.randn(2, 37, 64, dtype=torch.float64)
    got, state = mixer(x)
    assert state.recurrent.shape == (2, heads, 32 // heads, 64 // heads)
    torch.testing.assert_close(got, gla_layer_from_spec(mixer, x), rtol=1e-8, atol=1e-9)


# ---- Mamba2 ------------------------------------------------------------------------------------------------------

def _blocks(sd, prefix, spec):
    """Split the in_proj rows and conv channels of one layer into named blocks."""
    d_inner, gn = spec.d_inner, spec.ngroups * spec.d_state
    w = sd[prefix + "in_proj.weight"]
    z, x, B, C, dt = w.split([d_inner, d_inner, gn, gn, spec.nheads])
    cw, cb = sd[prefix + "conv1d.weight"], sd[prefix + "conv1d.bias"]
    cx, cB, cC = cw.split([d_inner, gn, gn])
    bx, bB, bC = cb.split([d_inner, gn, gn])
    return dict(z=z, x=x, B=B, C=C, dt=dt, conv_x=cx, conv_B=cB, conv_C=cC, bias_x=bx, bias_B=bB, bias_C=bC)


def _per_group(t, groups):
    return t.reshape(groups, -1, *t.shape[1:])


@pytest.mark.parametrize("mode", ["reinit", "copy", "zero", "preserve"])
def test_mamba2_kept_and_reset_tensors(mode):
    model = mamba2_model()
    new = statex.expand(model, [1], mode=mode, factor=4, seed=0)
    assert [s.d_state for s in new.config.layers] == [8, 32, 8]
    _assert_kept(model, new, _untouched_names(model, [1], "backbone"))
    prefix = "backbone.layers.1.mixer."
    old_sd, sd = model.state_dict(), new.state_dict()
    old_b, new_b = _blocks(old_sd, prefix, model.config.layers[1]), _blocks(sd, prefix, new.config.layers[1])
    for name in ("z", "x", "dt", "conv_x", "bias_x"):
        assert torch.equal(old_b[name], new_b[name]), name
    for name in ("D", "out_proj.weight"):
        assert torch.equal(old_sd[prefix + name], sd[prefix + name]), name
    assert torch.equal(old_sd["backbone.layers.1.norm.weight"], sd["backbone.layers.1.norm.weight"])
    heads = model.config.layers[1].nheads
    if mode == "preserve":
        for name in ("A_log", "dt_bias", "norm.weight"):
            assert torch.equal(old_sd[prefix + name], sd[prefix + name]), name
    else:
        assert torch.equal(sd[prefix + "A_log"], torch.log(torch.arange(1, heads + 1, dtype=torch.float64)))
        assert torch.equal(sd[prefix + "dt_bias"], torch.ones(heads, dtype=torch.float64))
        assert torch.equal(sd[prefix + "norm.weight"], torch.ones(64, dtype=torch.float64))
    G = 2
    for block in ("B", "C", "conv_B", "conv_C", "bias_B", "bias_C"):
        old, grown = _per_group(old_b[block], G), _per_group(new_b[block], G)
        assert grown.shape[1] == 4 * old.shape[1]
        if mode == "copy":
            assert torch.equal(grown, old.repeat(1, 4, *[1] * (old.dim() - 2))), block
        elif mode in ("zero", "preserve"):
            assert torch.equal(grown[:, :8], old), block
            extra = grown[:, 8:]
            zero_expected = mode == "zero" or block in ("C", "bias_C")
            assert bool((extra == 0).all()) == zero_expected, block
        else:  # reinit: the whole block freshly drawn
            assert not torch.equal(grown[:, :8], old), block


def test_mamba2_reinit_statistics_and_dt_init():
    model = mamba2_model(d_model=64, d_state=16, ngroups=1)
    new = statex.expand(model, [0], mode="reinit", factor=4, seed=0)
    blocks = _blocks(new.state_dict(), "backbone.layers.0.mixer.", new.config.layers[0])
    for name, fan_in in (("B", 64), ("C", 64), ("conv_B", 4), ("conv_C", 4), ("bias_B", 4), ("bias_C", 4)):
        bound = 1 / math.sqrt(fan_in)
        assert blocks[name].abs().max() <= bound
        assert blocks[name].std().item() == pytest.approx(bound / math.sqrt(3), rel=0.15), name
    softplus = statex.expand(model, [0], mode="reinit", dt_init="inverse-softplus")
    dt = F.softplus(softplus.state_dict()["backbone.layers.0.mixer.dt_bias"])
    assert (dt >= 1e-3 - 1e-9).all() and (dt <= 0.1 + 1e-9).all() and dt.std() > 0
    kept = statex.expand(model, [0], mode="reinit", keep_ssm_params=True)
    for name in ("A_log", "dt_bias", "norm.weight"):
        key = "backbone.layers.0.mixer." + name
        assert torch.equal(kept.state_dict()[key], model.state_dict()[key])


def _to_hf(model, tmp_path):
    """Save a statex Mamba2 (all layers the same shape) as a transformers checkpoint."""
    transformers = pytest.importorskip("transformers")
    spec, config = model.config.layers[0], model.config
    hf_config = transformers.Mamba2Config(
        vocab_size=config.vocab_size, hidden_size=config.d_model, num_hidden_layers=config.n_layer,
        state_size=spec.d_state, head_dim=spec.headdim, num_heads=spec.nheads, n_groups=spec.ngroups,
        expand=spec.d_inner // config.d_model, conv_kernel=spec.d_conv, tie_word_embeddings=True,
        layer_norm_epsilon=spec.norm_eps)
    hf = transformers.Mamba2ForCausalLM(hf_config).to(torch.float64)
    sd = {k.replace("backbone.embedding.", "backbone.embeddings."): v for k, v in model.state_dict().items()}
    hf.load_state_dict(sd, strict=False)
    return hf.eval()


@pytest.mark.parametrize("mode", ["reinit", "preserve"])
def test_expanded_mamba2_is_a_d_state_r_n_mamba2(mode, tmp_path):
    model = mamba2_model()
    new = statex.expand(model, "all", mode=mode, factor=4)
    hf = _to_hf(new, tmp_path)  # transformers' Mamba2 built with state_size = 4 * 8
    ids = torch.randint(0, VOCAB, (2, 29))
    with torch.no_grad():
        # transformers runs its SSD scan in float32 whatever the model dtype
        torch.testing.assert_close(new(ids).logits, hf(ids).logits.double(), rtol=1e-5, atol=1e-5)
    state = new(ids, use_cache=True).state
    assert all(s.ssm.shape == (2, 8, 8, 32) for s in state.layers)


def test_preserve_keeps_the_function_and_new_dims_learn():
    model = mamba2_model(bias=True)
    new = statex.expand(model, [0, 2], mode="preserve", factor=4, seed=1)
    ids = torch.randint(0, VOCAB, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(new(ids).logits, model(ids).logits, rtol=1e-12, atol=1e-12)
    new.train()
    spec, new_spec = model.config.layers[0], new.config.layers[0]

    def new_dim_grads():
        new.zero_grad()
        new(ids, labels=ids).loss.backward()
        out = {}
        for i in (0, 2):
            prefix = f"backbone.layers.{i}.mixer."
            grads = {n: p.grad for n, p in new.named_parameters() if n.startswith(prefix)}
            blocks = _blocks({prefix + k: v for k, v in ((n[len(prefix):], g) for n, g in grads.items())}
                             | {prefix + "in_proj.weight": grads[prefix + "in_proj.weight"]}, prefix, new_spec)
            bias = grads[prefix + "in_proj.bias"]
            gn = new_spec.ngroups * new_spec.d_state
            b_bias, c_bias = bias[2 * new_spec.d_inner:].split([gn, gn, new_spec.nheads])[:2]
            blocks["in_bias_B"], blocks["in_bias_C"] = b_bias, c_bias
            for name in ("B", "C", "conv_B", "conv_C", "bias_B", "bias_C", "in_bias_B", "in_bias_C"):
                out[(i, name)] = _per_group(blocks[name], spec.ngroups)[:, spec.d_state:]
        return out

    first = new_dim_grads()
    # Before any update, C's new dims are exactly 0, so (bilinear y = S C^T) the new B dims and the new C conv
    # weights receive zero gradient, while C's new in_proj rows, in_proj bias and conv bias receive gradient.
    for i in (0, 2):
        for name in ("C", "in_bias_C", "bias_C"):
            assert (first[(i, name)] != 0).all(), (i, name)
    with torch.no_grad():
        for p in new.parameters():
            p -= 1e-2 * p.grad
    second = new_dim_grads()
    for key, grad in second.items():
        assert (grad != 0).all(), key  # after one update every new B and C entry receives gradient


def test_copy_defect_identical_gradients_and_zero_defect_no_gradient():
    model = mamba2_model(ngroups=1)
    ids = torch.randint(0, VOCAB, (2, 30))
    prefix = "backbone.layers.0.mixer."
    for mode in ("copy", "zero"):
        new = statex.expand(model, [0], mode=mode, factor=4).train()
        new(ids, labels=ids).loss.backward()
        grads = _blocks({n: p.grad for n, p in new.named_parameters()}, prefix, new.config.layers[0])
        for name in ("B", "C", "conv_B", "conv_C", "bias_B", "bias_C"):
            pieces = grads[name].reshape(4, 8, *grads[name].shape[1:])
            if mode == "copy":  # the R copies get the same gradient, so they stay copies forever
                for r in range(1, 4):
                    torch.testing.assert_close(pieces[r], pieces[0], rtol=1e-10, atol=1e-12)
                assert pieces[0].abs().sum() > 0
            else:  # the new dims get exactly zero gradient, so they never learn
                assert bool((pieces[1:] == 0).all()), name
                assert pieces[0].abs().sum() > 0


# ---- round trips -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_save_load_round_trip_and_generation(family, tmp_path):
    model = gla_model() if family == "gla" else mamba2_model()
    new = statex.expand(model, "every:2", mode="inherit" if family == "gla" else "preserve", seed=3)
    new.save_pretrained(tmp_path / "x")
    loaded = statex.load_model(tmp_path / "x", dtype=None)
    assert loaded.config == new.config
    assert loaded.config.history[-1]["op"] == "statex-expand"
    for k, v in new.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    prompt = torch.randint(0, VOCAB, (2, 7))
    generated = loaded.generate(prompt, 10)
    seq = prompt
    with torch.no_grad():
        for _ in range(10):
            seq = torch.cat([seq, loaded(seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(generated, seq)


def test_bad_requests():
    gla, mamba = gla_model(), mamba2_model()
    with pytest.raises(statex.StatexError, match="must divide"):
        statex.expand(gla, [0], heads=3)
    with pytest.raises(statex.StatexError, match="leaves the layer unchanged"):
        statex.expand(gla, [0], heads=4)
    with pytest.raises(statex.StatexError, match="not a gla expansion mode"):
        statex.expand(gla, [0], mode="preserve")
    with pytest.raises(statex.StatexError, match="factor must be an integer >= 2"):
        statex.expand(mamba, [0], factor=1)
    with pytest.raises(statex.StatexError, match="out of range"):
        statex.expand(mamba, [5])
