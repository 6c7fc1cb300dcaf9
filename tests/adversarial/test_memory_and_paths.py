"""Requests larger than the machine are refused before allocating (checked under an address-space limit), and
no index or config makes statex read a file outside the model directory."""
import json
import os

import pytest
import torch

from adversarial.conftest import assert_one_line_refusal, refused, run_limited, tensor_file, write_config

LIMIT_GIB = 3.0


def test_a_foreign_config_with_a_billion_layers_is_refused_at_once(work):
    (work / "huge").mkdir()
    (work / "huge" / "config.json").write_text(json.dumps({"model_type": "gla", "hidden_size": 64,
                                                           "num_hidden_layers": 10**9, "vocab_size": 100}))
    assert_one_line_refusal(run_limited(["inspect", "huge"], work, LIMIT_GIB), "more than statex supports")


@pytest.mark.parametrize("argv, fragment", [
    (["eval", "model", "--tasks", "mqar", "--mqar-lengths", "1000000000", "--pairs", "4", "--out", "e"], "needs about"),
    (["train", "--init", "model", "--data", "corpus.jsonl", "--seq-len", "1000000000", "--out", "r"], "needs about"),
    (["expand", "model", "x", "--layers", "0", "--factor", "1000000000"], "mixer kind"),
    (["tokenizer", "train", "corpus.jsonl", "--vocab-size", "1000000000000", "--out", "t.json"], "vocab size"),
    (["tokenizer", "train", "corpus.jsonl", "--vocab-size", "1000000000", "--out", "t.json"], "needs about"),
])
def test_requests_too_large_for_the_machine_are_refused_before_allocating(work, argv, fragment):
    if argv[0] == "expand":  # Mamba2 grows d_state; a GLA model refuses --factor, so use a Mamba2 config
        from statex import build_model, mamba2_config

        build_model(mamba2_config(257, 32, 2, d_state=8, headdim=16), seed=0).save_pretrained(work / "m2")
        argv, fragment = ["expand", "m2", "x", "--layers", "0", "--factor", "1000000"], "needs about"
    done = run_limited(argv, work, LIMIT_GIB)
    assert_one_line_refusal(done, fragment)
    assert not any(p.name in ("e", "r", "x", "t.json") for p in work.iterdir())


def test_a_fresh_model_with_a_trillion_token_vocabulary_is_refused(work):
    write_config(work / "model", vocab_size=10**12)
    assert_one_line_refusal(run_limited(["train", "--init", "model", "--data", "corpus.jsonl", "--out", "r"], work,
                                        LIMIT_GIB), "larger than any tensor")


def test_a_yaml_alias_bomb_is_refused(work, capsys):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    (work / "bomb.yaml").write_text("\n".join(lines) + "\nsynthetic: *a9\n")
    refused(capsys, ["train", "--config", "bomb.yaml", "--init", "model", "--out", "r"], "aliases", work)


def test_a_huge_config_json_is_not_read_whole(work, capsys):
    with open(work / "model" / "config.json", "r+b") as handle:
        handle.truncate(50 * 2**30)  # sparse: 50 GB on paper, nothing on disk
    refused(capsys, ["inspect", "model"], "larger than 16 MiB", work)


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/tmp/outside.safetensors", "sub/../../outside.safetensors"])
def test_a_shard_index_cannot_name_a_file_outside_the_model(work, capsys, shard):
    weights = work / "model" / "model.safetensors"
    os.replace(weights, work / "outside.safetensors")
    names = json.loads((work / "model" / "config.json").read_text())
    del names
    from safetensors import safe_open

    with safe_open(str(work / "outside.safetensors"), "pt") as handle:
        keys = list(handle.keys())
    (work / "model" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: shard for k in keys}}))
    refused(capsys, ["expand", "model", "out", "--layers", "0"], "outside the model directory", work)


def test_a_bin_index_cannot_hand_a_system_file_to_torch_load(work, capsys):
    os.remove(work / "model" / "model.safetensors")
    (work / "model" / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"weight_map": {"model.embeddings.weight": "/etc/passwd"}}))
    refused(capsys, ["expand", "model", "out", "--layers", "0"], "outside the model directory", work)


def test_a_tensor_of_the_right_shape_but_an_integer_dtype_is_refused(work, capsys):
    from safetensors.torch import load_file

    tensors = load_file(str(work / "model" / "model.safetensors"))
    tensors["model.norm.weight"] = tensors["model.norm.weight"].to(torch.int32)
    tensor_file(work / "model" / "model.safetensors", tensors)
    refused(capsys, ["expand", "model", "out", "--layers", "0"], "expected floating-point", work)
