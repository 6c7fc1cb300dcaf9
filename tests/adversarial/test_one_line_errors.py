"""Malformed configs, flags and files end in one line and exit 2, never a traceback; failed writes leave nothing."""
import json
import os

import pytest
import torch

import statex
from adversarial.conftest import refused, write_config

TRAIN = ["train", "--init", "model", "--data", "corpus.jsonl", "--seq-len", "32", "--steps", "2", "--no-progress",
         "--threads", "1"]


@pytest.mark.parametrize("changes, fragment", [
    ({"format_version": "2"}, "format_version must be a positive integer"),
    ({"intermediate_size": 256.5}, "intermediate_size must be an integer"),
    ({"d_model": "32"}, "d_model must be an integer"),
    ({"norm_eps": "abc"}, "norm_eps must be a number"),
    ({"vocab_size": True}, "vocab_size must be an integer"),
    ({"layers": "x"}, "must be a list"),
    ({"eos_token_id": 10**6}, "outside the vocabulary"),
])
def test_statex_config_values_of_the_wrong_type_are_named(work, capsys, changes, fragment):
    write_config(work / "model", **changes)
    refused(capsys, ["inspect", "model"], fragment, work)
    refused(capsys, ["expand", "model", "out", "--layers", "0"], fragment, work)


@pytest.mark.parametrize("field, value, fragment", [
    ("gate_logit_normalizer", "x", "gate_logit_normalizer must be a number"),
    ("num_heads", 0, "num_heads must be a positive integer"),
    ("use_short_conv", "yes", "use_short_conv must be true or false"),
])
def test_layer_values_of_the_wrong_type_are_named(work, capsys, field, value, fragment):
    data = json.loads((work / "model" / "config.json").read_text())
    data["layers"][0][field] = value
    write_config(work / "model", layers=data["layers"])
    refused(capsys, ["expand", "model", "out", "--layers", "1"], fragment, work)


@pytest.mark.parametrize("ssm_cfg, fragment", [
    ({"layer": "Mamba2", "dt_limit": [1]}, "must be a pair"),
    ({"layer": "Mamba2", "dt_limit": [0, "abc"]}, "cannot read the time-step limit"),
    ({"layer": "Mamba2", "headdim": 0}, "headdim=0"),
    ({"layer": "Mamba2", "d_state": 8.5}, "d_state must be an integer"),
])
def test_foreign_mamba2_configs_with_bad_values(work, capsys, ssm_cfg, fragment):
    (work / "m").mkdir()
    (work / "m" / "config.json").write_text(json.dumps({"d_model": 64, "n_layer": 2, "vocab_size": 100,
                                                        "ssm_cfg": ssm_cfg}))
    refused(capsys, ["inspect", "m"], fragment, work)


@pytest.mark.parametrize("config, fragment", [
    ({"d_model": 64, "n_layer": "2", "vocab_size": 100, "ssm_cfg": {"layer": "Mamba2"}}, "n_layer must be an integer"),
    ({"model_type": "gla", "hidden_size": "64", "num_hidden_layers": 2, "vocab_size": 10}, "hidden_size must be"),
    ({"model_type": "mamba2", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 10, "num_heads": 2,
      "head_dim": 64, "state_size": 8, "n_groups": None}, "missing the field 'n_groups'"),
])
def test_foreign_configs_with_strings_for_numbers(work, capsys, config, fragment):
    (work / "m").mkdir()
    (work / "m" / "config.json").write_text(json.dumps(config))
    refused(capsys, ["inspect", "m"], fragment, work)


def test_deeply_nested_json_is_refused(work, capsys):
    (work / "model" / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    refused(capsys, ["inspect", "model"], "nested too deeply", work)


@pytest.mark.parametrize("flags, fragment", [
    (["--temperature", "nan"], "--temperature must be a finite number"),
    (["--top-p", "nan"], "--top-p must be in (0, 1]"),
    (["--stop-id", str(10**30)], "not a token id"),
    (["--seed", str(10**30)], "--seed must be in"),
])
def test_generate_flags(work, capsys, flags, fragment):
    refused(capsys, ["generate", "model", "--prompt", "hi", *flags], fragment, work)


def test_a_prompt_that_is_not_utf8_is_refused(work, capsys):
    refused(capsys, ["generate", "model", "--prompt", "caf\udce9"], "not valid UTF-8", work)


def test_non_finite_weights_are_reported_not_sampled_or_printed(work, capsys):
    model = statex.load_model(work / "model")
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    model.save_pretrained(work / "model")
    for extra in ([], ["--temperature", "0.8", "--seed", "1"]):
        refused(capsys, ["generate", "model", "--prompt", "hi", "--max-new-tokens", "3", *extra],
                "NaN or infinite logits", work)


@pytest.mark.parametrize("flags, fragment", [
    (["--tasks", "passkey", "--lengths", "inf"], "cannot read the list"),
    (["--tasks", "passkey", "--lengths", "1.5k5"], "cannot read the list"),
    (["--tasks", "passkey", "--lengths", "8"], "a passkey prompt needs at least"),
    (["--tasks", "niah", "--lengths", "128"], "a niah prompt needs at least"),
    (["--tasks", "mqar", "--pairs", "1000", "--mqar-lengths", "256"], "no cell fits"),
    (["--tasks", "mqar", "--seed", "-1"], "--seed must be in"),
])
def test_eval_requests_that_would_measure_nothing_or_something_else(work, capsys, flags, fragment):
    refused(capsys, ["eval", "model", *flags, "--out", "e"], fragment, work)


@pytest.mark.parametrize("flags, fragment", [
    (["--threads", "-1"], "--threads must be >= 1"),
    (["--synthetic", "mqar:-1"], "finite number >= 0"),
    (["--synthetic", "mqar:nan"], "finite number >= 0"),
    (["--synthetic", "passkey:1", "--seq-len", "32"], "--seq-len >= 64"),
    (["--synthetic", "mqar:1", "--seq-len", "2"], "--seq-len >= 4"),
    (["--lr", "nan"], "--lr must be a number"),
    (["--seed", str(2**64)], "--seed must be in"),
])
def test_train_flags_are_refused_before_anything_is_written(work, capsys, flags, fragment):
    refused(capsys, [*TRAIN, "--out", "run", *flags], fragment, work)


@pytest.mark.parametrize("text, fragment", [
    ("seq_len: 64.5\n", "--seq-len must be an integer"),
    ("steps: abc\n", "--steps must be an integer, got 'abc'"),
    ("data: 5\n", "--data must be a string"),
    ("synthetic: [{kind: mqar, weight: 1, num_pairs: 4}]\n", "num_pairs must be a list"),
    ("synthetic: 7\n", "--synthetic must be"),
])
def test_train_config_files_with_wrong_types(work, capsys, text, fragment):
    (work / "c.yaml").write_text(text)
    refused(capsys, ["train", "--config", "c.yaml", "--init", "model", "--out", "run"] +
            ([] if "data" in text else ["--data", "corpus.jsonl"]), fragment, work)


def test_bad_data_and_bad_weights_leave_no_run_directory(work, capsys):
    (work / "bad.jsonl").write_text('{"text": "fine"}\nnot json\n')
    refused(capsys, ["train", "--init", "model", "--data", "bad.jsonl", "--seq-len", "8", "--out", "run",
                     "--no-progress"],
            "not a JSON line", work)
    with open(work / "model" / "model.safetensors", "r+b") as handle:
        handle.truncate(100)
    refused(capsys, ["train", "--model", "model", "--data", "corpus.jsonl", "--out", "run", "--no-progress"],
            "unreadable safetensors", work)


def test_an_output_under_a_file_is_refused(work, capsys):
    refused(capsys, ["expand", "model", "notes.txt/out", "--layers", "0"], "is not a directory", work)
    refused(capsys, [*TRAIN, "--out", "notes.txt/run"], "is not a directory", work)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_target_is_refused_before_the_work(work, capsys):
    (work / "ro").mkdir()
    os.chmod(work / "ro", 0o555)
    try:
        refused(capsys, ["expand", "model", "ro/out", "--layers", "0"], "cannot write here", work)
        refused(capsys, ["eval", "model", "--tasks", "mqar", "--out", "ro/e"], "cannot write here", work)
    finally:
        os.chmod(work / "ro", 0o755)


def test_a_full_disk_during_training_or_evaluation_is_one_line(work, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", "checkpoint")

    monkeypatch.setattr(torch, "save", full)
    from statex.cli import main

    assert main([*TRAIN, "--out", "run"]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "statex" in line or "Error" in line]
    assert len(err) == 1 and "No space left on device" in err[0], err
    # the run stopped at its first checkpoint: no checkpoint and no temporary of one is left half-written
    assert list((work / "run" / "checkpoints").iterdir()) == []
    monkeypatch.setattr("statex.eval.report.write_atomic", full)
    refused(capsys, ["eval", "model", "--tasks", "mqar", "--pairs", "4", "--mqar-lengths", "32", "--n", "2",
                     "--out", "e", "--no-plots"], "No space left on device", work)
