"""Loaded weights own normally allocated memory, in every format, and loading reads one tensor at a time.

Why: safetensors hands out tensors that live inside the file's memory map at the header's offsets (8 mod 64);
BLAS takes other code paths on such memory on some CPUs and rounds differently, so a model that kept them
would not compute the bits of the model that was saved."""
import json
import weakref

import pytest
import torch
from safetensors.torch import save_file

import statex
from conftest import randomize_, tiny_gla_config, tiny_mamba2_config
from statex.io.weights import WeightSource, load_into


def _assert_owned_and_aligned(model):
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    assert tensors
    for name, tensor in tensors:
        assert tensor.device.type == "cpu", name
        assert tensor.data_ptr() % 64 == 0, f"{name} starts at {tensor.data_ptr() % 64} mod 64"
        assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size(), name  # not a view


def _same_bits(original, loaded, vocab):
    ids = torch.randint(0, vocab, (2, 33))
    with torch.no_grad():
        assert torch.equal(original(ids).logits, loaded(ids).logits)


def _fla_config(model):
    spec = model.config.layers[0]
    return {"model_type": "gla", "hidden_size": model.config.d_model, "num_hidden_layers": model.config.n_layer,
            "num_heads": spec.num_heads, "expand_k": spec.key_dim / model.config.d_model,
            "expand_v": spec.value_dim / model.config.d_model, "intermediate_size": model.config.intermediate_size,
            "use_short_conv": spec.use_short_conv, "vocab_size": model.config.vocab_size}


def _mamba_ssm_config(model):
    spec = model.config.layers[0]
    return {"d_model": model.config.d_model, "n_layer": model.config.n_layer, "vocab_size": model.config.vocab_size,
            "pad_vocab_size_multiple": 1, "tie_embeddings": True,
            "ssm_cfg": {"layer": "Mamba2", "d_state": spec.d_state, "headdim": spec.headdim, "ngroups": spec.ngroups}}


def _write_shards(path, state, suffix):
    """Two shards and an index, as transformers writes them."""
    names = sorted(state)
    halves = {f"model-0000{i + 1}-of-00002{suffix}": names[i::2] for i in range(2)}
    weight_map = {}
    for shard, keys in halves.items():
        part = {k: state[k].contiguous() for k in keys}
        if suffix == ".safetensors":
            save_file(part, str(path / shard))
        else:
            torch.save(part, path / shard)
        weight_map.update({k: shard for k in keys})
    index = "model.safetensors.index.json" if suffix == ".safetensors" else "pytorch_model.bin.index.json"
    (path / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


FORMATS = ["own", "fla-safetensors", "fla-bin", "mamba_ssm-bin", "sharded-safetensors", "sharded-bin"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [None, torch.float64])
def test_every_format_loads_into_owned_aligned_memory_with_the_same_bits(tmp_path, fmt, dtype):
    family = "mamba2" if fmt.startswith("mamba") else "gla"
    config = tiny_mamba2_config() if family == "mamba2" else tiny_gla_config()
    model = randomize_(statex.build_model(config, dtype=torch.float64)).eval()
    state = {k: v for k, v in model.state_dict().items()}
    path = tmp_path / "m"
    if fmt == "own":
        model.save_pretrained(path)
    else:
        path.mkdir()
        foreign = _mamba_ssm_config(model) if family == "mamba2" else _fla_config(model)
        (path / "config.json").write_text(json.dumps(foreign))
        if fmt == "fla-safetensors":
            save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"))
        elif fmt in ("fla-bin", "mamba_ssm-bin"):
            torch.save(state, path / "pytorch_model.bin")
        else:
            _write_shards(path, state, ".safetensors" if fmt == "sharded-safetensors" else ".bin")
    loaded = statex.load_model(path, dtype=dtype)
    _assert_owned_and_aligned(loaded)
    _same_bits(model, loaded, config.vocab_size)


def test_hf_mamba2_directory_loads_into_owned_aligned_memory(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = transformers.Mamba2ForCausalLM(transformers.Mamba2Config(
        vocab_size=67, hidden_size=32, num_hidden_layers=2, state_size=8, head_dim=8, num_heads=8, n_groups=2,
        expand=2, chunk_size=16)).eval()
    hf.save_pretrained(tmp_path / "hf")
    loaded = statex.load_model(tmp_path / "hf", dtype=None)
    _assert_owned_and_aligned(loaded)
    again = statex.load_model(tmp_path / "hf", dtype=None)
    _same_bits(loaded, again, 67)


class _CountingSource(WeightSource):
    """Tracks how many tensors it has handed out that are still alive."""

    def __init__(self, path):
        super().__init__(path)
        self.alive: list[weakref.ref] = []
        self.most_alive = 0

    def read(self, name):
        tensor = super().read(name)
        self.alive = [r for r in self.alive if r() is not None] + [weakref.ref(tensor)]
        self.most_alive = max(self.most_alive, len(self.alive))
        return tensor


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_loading_holds_one_stored_tensor_at_a_time(tmp_path, weights):
    model = statex.build_model(tiny_gla_config(n_layer=3))
    path = tmp_path / "m"
    path.mkdir()
    if weights == "model.safetensors":
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / weights))
    else:
        torch.save(model.state_dict(), path / weights)
    target = statex.build_model(model.config, device="meta")
    with _CountingSource(path / weights) as source:
        load_into(target, source)
        assert len(source.shapes) > 20
    assert source.most_alive == 1
    for name, tensor in target.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name


def test_shape_errors_are_raised_before_any_tensor_is_read(tmp_path):
    model = statex.build_model(tiny_gla_config())
    state = dict(model.state_dict())
    state["model.norm.weight"] = torch.zeros(5)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    target = statex.build_model(model.config, device="meta")
    with _CountingSource(tmp_path / "w.safetensors") as source:
        with pytest.raises(statex.CheckpointError, match="shape mismatch for 'model.norm.weight'"):
            load_into(target, source)
    assert source.most_alive == 0


def test_duplicate_weight_across_shards_is_refused(tmp_path):
    save_file({"a": torch.zeros(2)}, str(tmp_path / "s1.safetensors"))
    save_file({"a": torch.zeros(2)}, str(tmp_path / "s2.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}))
    with pytest.raises(statex.CheckpointError, match="appears in two shards"):
        WeightSource(tmp_path / "model.safetensors.index.json")
