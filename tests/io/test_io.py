"""Checkpoint formats: round trips, the HF transformers Mamba2 reference, fla / mamba_ssm names, strict errors."""
import json
import os

import pytest
import torch
from safetensors.torch import save_file

import statex
from conftest import randomize_, tiny_gla_config, tiny_mamba2_config


def test_save_load_round_trip_is_bit_identical(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = statex.load_model(tmp_path / "m", dtype=None)
    a, b = tiny_model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ids = torch.randint(0, 61, (2, 33))
    with torch.no_grad():
        assert torch.equal(tiny_model(ids).logits, loaded(ids).logits)
    if tiny_model.config.tie_embeddings:
        assert loaded.lm_head.weight is loaded.embed_tokens.weight


def test_heterogeneous_layers_reload_without_flags(tmp_path):
    config = tiny_gla_config(n_layer=3)
    config.layers[0] = statex.GLASpec(num_heads=1, key_dim=16, value_dim=32, use_short_conv=True)
    model = statex.build_model(config)
    model.save_pretrained(tmp_path / "m")
    loaded = statex.load_model(tmp_path / "m")
    assert loaded.config == config
    assert loaded.blocks[0].attn.g_norm_swish_gate.weight.shape == (32,)
    m_config = tiny_mamba2_config(n_layer=2)
    m_config.layers[1] = statex.Mamba2Spec(d_state=32, nheads=8, headdim=8, ngroups=2, dt_limit=(0.0, 0.5))
    statex.build_model(m_config).save_pretrained(tmp_path / "m2")
    assert statex.load_model(tmp_path / "m2").config == m_config


def test_saving_keeps_other_files_and_overwrites_atomically(tmp_path):
    target = tmp_path / "m"
    target.mkdir()
    (target / "tokenizer.json").write_text("{}")
    statex.build_model(tiny_gla_config()).save_pretrained(target)
    assert (target / "tokenizer.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary directory left behind


def _hf_mamba2(tie, n_groups=2, time_step_limit=(0.0, float("inf"))):
    transformers = pytest.importorskip("transformers")
    config = transformers.Mamba2Config(
        vocab_size=67, hidden_size=32, num_hidden_layers=3, state_size=8, head_dim=8, num_heads=8,
        n_groups=n_groups, expand=2, conv_kernel=4, chunk_size=16, tie_word_embeddings=tie,
        time_step_limit=time_step_limit,
    )
    model = transformers.Mamba2ForCausalLM(config).eval()
    with torch.no_grad():  # move the parameters HF initialises to constants
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm_f.weight") or name.endswith(".D"):
                p.add_(torch.randn_like(p) * 0.2)
    return model


@pytest.mark.parametrize("tie,n_groups,limit", [(True, 2, (0.0, float("inf"))), (False, 1, (0.0, float("inf"))),
                                                (False, 4, (0.01, 0.5))])
def test_matches_transformers_mamba2(tmp_path, tie, n_groups, limit):
    hf = _hf_mamba2(tie, n_groups, limit)
    hf.save_pretrained(tmp_path / "hf")
    model = statex.load_model(tmp_path / "hf")
    assert model.source_format == "hf-mamba2"
    ids = torch.randint(0, 67, (2, 37))  # not a multiple of HF's chunk (16) nor ours (64)
    with torch.no_grad():
        expected = hf(ids).logits
        got = model(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # and through our decode path, token by token
    with torch.no_grad():
        state, steps = model.empty_state(2), []
        for t in range(ids.shape[1]):
            out = model(ids[:, t:t + 1], state=state)
            state = out.state
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), expected, rtol=1e-4, atol=1e-4)


def test_mamba2_state_dict_uses_mamba_ssm_names():
    model = statex.build_model(tiny_mamba2_config(n_layer=1))
    expected = {"backbone.embedding.weight", "backbone.norm_f.weight", "lm_head.weight",
                "backbone.layers.0.norm.weight"} | {
        f"backbone.layers.0.mixer.{n}" for n in
        ["in_proj.weight", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D", "norm.weight", "out_proj.weight"]}
    assert set(model.state_dict()) == expected


def test_gla_state_dict_uses_fla_names():
    model = statex.build_model(tiny_gla_config(n_layer=1, use_short_conv=True))
    attn = ["q_proj.weight", "k_proj.weight", "v_proj.weight", "g_proj.weight", "o_proj.weight",
            "gk_proj.0.weight", "gk_proj.1.weight", "gk_proj.1.bias", "g_norm_swish_gate.weight",
            "q_conv1d.weight", "k_conv1d.weight", "v_conv1d.weight"]
    expected = {"model.embeddings.weight", "model.norm.weight", "lm_head.weight",
                "model.layers.0.attn_norm.weight", "model.layers.0.mlp_norm.weight"} | {
        f"model.layers.0.attn.{n}" for n in attn} | {
        f"model.layers.0.mlp.{n}.weight" for n in ("gate_proj", "up_proj", "down_proj")}
    assert set(model.state_dict()) == expected


def _fla_dir(tmp_path, model, **extra):
    spec = model.config.layers[0]
    config = {"model_type": "gla", "attn_mode": "fused_chunk", "hidden_size": model.config.d_model,
              "num_hidden_layers": model.config.n_layer, "num_heads": spec.num_heads,
              "expand_k": spec.key_dim / model.config.d_model, "expand_v": spec.value_dim / model.config.d_model,
              "hidden_ratio": 4, "intermediate_size": model.config.intermediate_size,
              "use_short_conv": spec.use_short_conv, "conv_size": spec.conv_size, "norm_eps": 1e-6,
              "vocab_size": model.config.vocab_size, "tie_word_embeddings": False, "fuse_norm": True, **extra}
    path = tmp_path / "fla"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_fla_gla_directory_loads(tmp_path):
    model = randomize_(statex.build_model(tiny_gla_config()))
    path = _fla_dir(tmp_path, model)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors"))
    loaded = statex.load_model(path)
    assert loaded.source_format == "fla-gla"
    ids = torch.randint(0, 61, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_fla_gla_unfused_norm_name_and_bin_file(tmp_path):
    model = randomize_(statex.build_model(tiny_gla_config(use_short_conv=False)))
    path = _fla_dir(tmp_path, model, fuse_norm=False)
    renamed = {k.replace("g_norm_swish_gate", "g_norm"): v for k, v in model.state_dict().items()}
    torch.save(renamed, path / "pytorch_model.bin")
    loaded = statex.load_model(path)
    ids = torch.randint(0, 61, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_mamba_ssm_directory_loads_with_padded_vocab(tmp_path):
    config = tiny_mamba2_config(vocab_size=64)
    model = randomize_(statex.build_model(config))
    path = tmp_path / "mamba"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({
        "d_model": 32, "d_intermediate": 0, "n_layer": 2, "vocab_size": 59, "pad_vocab_size_multiple": 16,
        "ssm_cfg": {"layer": "Mamba2", "d_state": 8, "headdim": 8, "ngroups": 2}, "attn_layer_idx": [],
        "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True, "tie_embeddings": True}))
    torch.save(model.state_dict(), path / "pytorch_model.bin")  # mamba_ssm saves lm_head too
    loaded = statex.load_model(path)
    assert loaded.config.vocab_size == 64 and loaded.source_format == "mamba_ssm"
    ids = torch.randint(0, 59, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


# ---- bad input -------------------------------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    model = statex.build_model(tiny_gla_config())
    model.save_pretrained(tmp_path / "m")
    return tmp_path / "m", model


def _rewrite_weights(path, tensors):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))


def test_missing_key_is_named(saved):
    path, model = saved
    sd = model.state_dict()
    del sd["model.layers.1.attn.k_proj.weight"]
    _rewrite_weights(path, sd)
    with pytest.raises(statex.CheckpointError, match=r"missing weight 'model.layers.1.attn.k_proj.weight'"):
        statex.load_model(path)


def test_unexpected_key_is_named(saved):
    path, model = saved
    sd = dict(model.state_dict(), **{"model.layers.0.attn.extra": torch.zeros(2)})
    _rewrite_weights(path, sd)
    with pytest.raises(statex.CheckpointError, match=r"unexpected weight 'model.layers.0.attn.extra'"):
        statex.load_model(path)


def test_shape_mismatch_is_named(saved):
    path, model = saved
    sd = model.state_dict()
    sd["model.layers.0.attn.o_proj.weight"] = torch.zeros(32, 31)
    _rewrite_weights(path, sd)
    with pytest.raises(statex.CheckpointError, match=r"shape mismatch for 'model.layers.0.attn.o_proj.weight'"):
        statex.load_model(path)


def test_truncated_safetensors(saved):
    path, _ = saved
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(statex.CheckpointError, match="unreadable safetensors"):
        statex.load_model(path)


def test_bin_with_non_tensor_objects_is_refused(tmp_path, saved):
    path, model = saved
    (path / "model.safetensors").unlink()

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"model.embeddings.weight": Evil()}, path / "pytorch_model.bin")
    with pytest.raises(statex.CheckpointError, match="cannot be read as a tensor checkpoint"):
        statex.load_model(path)
    torch.save({"model.embeddings.weight": [1, 2, 3]}, path / "pytorch_model.bin")
    with pytest.raises(statex.CheckpointError, match="not a tensor"):
        statex.load_model(path)


def test_not_a_model_path(tmp_path):
    with pytest.raises(statex.CheckpointError, match="no such file"):
        statex.load_model(tmp_path / "nope")
    with pytest.raises(statex.CheckpointError, match="no config.json"):
        statex.load_model(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(statex.ConfigError, match="not a statex, fla GLA"):
        statex.load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(statex.ConfigError, match="not valid JSON"):
        statex.load_model(tmp_path)


def test_inconsistent_configs(tmp_path, saved):
    path, model = saved
    cfg = json.loads((path / "config.json").read_text())
    cfg["layers"][0]["num_heads"] = 3
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(statex.ConfigError, match="num_heads=3 must divide"):
        statex.load_model(path)
    del cfg["vocab_size"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(statex.ConfigError, match="missing the field 'vocab_size'"):
        statex.load_model(path)
    hf = {"model_type": "mamba2", "hidden_size": 32, "num_hidden_layers": 2, "vocab_size": 10, "num_heads": 7,
          "head_dim": 8, "state_size": 8, "n_groups": 1}
    (path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(statex.ConfigError, match="num_heads \\* head_dim"):
        statex.load_model(path)
    del hf["n_groups"]
    (path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(statex.ConfigError, match="missing the field 'n_groups'"):
        statex.load_model(path)
    (path / "config.json").write_text(json.dumps({"d_model": 32, "n_layer": 2, "vocab_size": 10, "ssm_cfg": {}}))
    with pytest.raises(statex.ConfigError, match="only Mamba2"):
        statex.load_model(path)


def test_files_are_written_atomically_with_default_permissions(tmp_path):
    from statex.files import write_atomic

    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a.json", "one")
        write_atomic(tmp_path / "a.json", b"two")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").read_text() == "two" and list(tmp_path.iterdir()) == [tmp_path / "a.json"]
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
