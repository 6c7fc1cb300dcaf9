"""Argument errors are reported before any model, weights or data are loaded.

The fixtures are config-only directories (the 1.3B configs, no weights): a command that touched the weights
first would fail with "no weights found" instead of naming the bad argument."""
import json
from pathlib import Path

import pytest

import statex
from statex.cli import main
from statex.data.dataset import parse_synthetic
from conftest import tiny_gla_config

FIXTURES = Path(__file__).parent / "fixtures"
GLA, MAMBA2 = FIXTURES / "gla-1.3B", FIXTURES / "mamba2-1.3b"


def _error(capsys, argv, fragment):
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
    assert "no weights found" not in err[0]


@pytest.mark.parametrize("src,flags,message", [
    (GLA, ["--layers", "every:0"], "must be >= 1"),
    (GLA, ["--layers", "30"], "out of range"),
    (GLA, ["--layers", "every:6", "--heads", "3"], "must divide"),
    (GLA, ["--layers", "every:6", "--mode", "copy"], "not a gla expansion mode"),
    (MAMBA2, ["--layers", "0", "--factor", "1"], "factor must be an integer >= 2"),
    (MAMBA2, ["--layers", "0", "--mode", "inherit"], "not a mamba2 expansion mode"),
    (MAMBA2, ["--layers", "0", "--dt-init", "reset", "--mode", "zero", "--layers", "x"], "cannot read"),
])
def test_expand_checks_the_request_before_reading_weights(tmp_path, capsys, src, flags, message):
    _error(capsys, ["expand", src, tmp_path / "dst", *flags], message)
    assert list(tmp_path.iterdir()) == []


def test_expand_output_clashes(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    _error(capsys, ["expand", GLA, tmp_path / "file", "--layers", "0", "--force"], "exists and is not a directory")
    _error(capsys, ["expand", GLA, GLA, "--layers", "0", "--force"], "is the input")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "kept").write_text("x")
    _error(capsys, ["expand", GLA, tmp_path / "dir", "--layers", "0"], "already exists")
    # a valid request reaches the weights, which the config-only fixture lacks
    assert main(["expand", str(GLA), str(tmp_path / "new"), "--layers", "every:6"]) == 2
    assert "no weights found" in capsys.readouterr().err


@pytest.mark.parametrize("flags,message", [
    (["--top-p", "2"], "--top-p must be in (0, 1]"),
    (["--top-k", "0"], "--top-k must be >= 1"),
    (["--temperature", "-1"], "--temperature must be a finite number >= 0"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be in [1, 1000000]"),
    (["--prompt", ""], "zero tokens"),
])
def test_generate_checks_flags_and_prompt_before_reading_weights(capsys, flags, message):
    _error(capsys, ["generate", GLA, "--prompt", "hello", *flags], message)


def test_generate_and_eval_check_the_tokenizer_against_the_config(tmp_path, capsys):
    statex.build_model(tiny_gla_config()).save_pretrained(tmp_path / "m")  # vocab 61 < 257 bytes
    (tmp_path / "m" / "model.safetensors").unlink()
    _error(capsys, ["generate", tmp_path / "m", "--prompt", "xyz", "--tokenizer", "bytes"], "wrong tokenizer")
    _error(capsys, ["eval", tmp_path / "m", "--tasks", "mqar", "--out", tmp_path / "o"], "wrong tokenizer")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flags,message", [
    (["--tasks", "mqar,frob"], "unknown task(s) frob"),
    (["--tasks", "ppl"], "task ppl needs --ppl-file"),
    (["--tasks", "ppl", "--ppl-file", "missing.txt"], "--ppl-file missing.txt: no such file"),
    (["--tasks", "recall", "--recall-files", "a.jsonl"], "--recall-files a.jsonl: no such file"),
    (["--tasks", "icl"], "task icl needs --icl-file"),
    (["--tasks", "niah", "--niah-variants", "2"], "needs --haystack"),
    (["--tasks", "niah", "--niah-variants", "4"], "--niah-variants: choose from 1, 2, 3"),
    (["--tasks", "passkey", "--depths", "0,1.5"], "--depths: 1.5 is not in [0, 1]"),
    (["--tasks", "mqar", "--pairs", "8,0"], "--pairs: 0 must be >= 1"),
    (["--tasks", "mqar", "--lengths", "1k,x"], "cannot read the list"),
    (["--tasks", "mqar", "--n", "0"], "--n must be >= 1"),
])
def test_eval_checks_the_request_before_loading_models(tmp_path, capsys, flags, message):
    _error(capsys, ["eval", GLA, *flags, "--out", tmp_path / "out"], message)
    assert not (tmp_path / "out").exists()


def test_eval_output_that_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    _error(capsys, ["eval", GLA, "--tasks", "mqar", "--out", tmp_path / "f"], "exists and is not a directory")


@pytest.mark.parametrize("flags,message", [
    (["--data", "missing.jsonl"], "missing.jsonl: no such data file"),
    (["--synthetic", "mqar:1", "--expand-layers", "every:0"], "must be >= 1"),
    (["--synthetic", "mqar:1", "--expand-layers", "0", "--mode", "preserve"], "not a gla expansion mode"),
    (["--synthetic", "mqar:1", "--expand-layers", "0", "--heads", "3"], "must divide"),
    (["--synthetic", "sudoku:1"], "unknown synthetic source 'sudoku'"),
])
def test_train_checks_the_request_before_reading_data_or_weights(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    _error(capsys, ["train", "--model", GLA, "--out", out, "--steps", "1", *flags], message)
    assert not out.exists()


def test_train_refuses_a_tokenizer_larger_than_the_vocabulary_before_any_data(tmp_path, capsys):
    statex.build_model(tiny_gla_config()).save_pretrained(tmp_path / "m")
    (tmp_path / "data.txt").write_text("some text " * 100)
    _error(capsys, ["train", "--model", tmp_path / "m", "--data", tmp_path / "data.txt", "--out", tmp_path / "run"],
           "wrong tokenizer")
    assert not (tmp_path / "run").exists()
    (tmp_path / "f").write_text("x")
    _error(capsys, ["train", "--model", GLA, "--synthetic", "mqar:1", "--out", tmp_path / "f"],
           "exists and is not a directory")


@pytest.mark.parametrize("flags,message", [
    (["--modes", "inherit,sideways"], "unknown StateX mode(s) sideways"),
    (["--families", "gla,rwkv"], "unknown family rwkv"),
])
def test_demo_checks_its_flags_before_writing(tmp_path, capsys, flags, message):
    _error(capsys, ["demo", "--quick", "--out", tmp_path / "demo", *flags], message)
    assert not (tmp_path / "demo").exists()


def test_tokenizer_train_flags(tmp_path, capsys):
    (tmp_path / "d.txt").write_text("abc")
    _error(capsys, ["tokenizer", "train", tmp_path / "d.txt", "--vocab-size", "300", "--min-frequency", "0",
                    "--out", tmp_path / "t.json"], "--min-frequency must be >= 1")
    _error(capsys, ["tokenizer", "train", tmp_path / "missing", "--vocab-size", "300", "--out", tmp_path / "t.json"],
           "no such data file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.txt"]


def test_device_and_autotune_flags(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _error(capsys, ["generate", GLA, "--prompt", "hi", "--device", "cuda"], "no CUDA device is available")
    _error(capsys, ["generate", GLA, "--prompt", "hi", "--device", "tpu"], "--device must be auto, cpu or cuda")
    _error(capsys, ["eval", GLA, "--tasks", "mqar", "--autotune", "sometimes"], "invalid choice")
    _error(capsys, ["train", "--model", GLA, "--synthetic", "mqar:1", "--autotune", "sometimes"],
           "--autotune must be one of full, fast, off")


def test_mqar_pairs_beyond_the_tokenizers_keys_are_refused_first(tmp_path, capsys):
    # the byte tokenizer gives MQAR 127 keys (the lower half of its regular ids): 256 pairs cannot be built
    config = tmp_path / "lpt.json"
    config.write_text(json.dumps({"model": str(GLA), "tokenizer": "bytes", "out": str(tmp_path / "run"), "steps": 1,
                                  "seq_len": 4096, "synthetic": [{"kind": "mqar", "weight": 1, "num_pairs": [16, 256]}]}))
    _error(capsys, ["train", "--config", config], "up to 256 pairs need 256 distinct keys")
    assert not (tmp_path / "run").exists()
    _error(capsys, ["eval", GLA, "--tasks", "mqar", "--pairs", "64,256", "--lengths", "2k", "--tokenizer", "bytes",
                    "--out", tmp_path / "out"], "--pairs 256: MQAR needs 256 distinct keys")
    assert not (tmp_path / "out").exists()
    # pairs that fit no length of the grid are skipped by the task, so they are no error here
    statex.eval.check_tokenizer(["mqar"], statex.load_tokenizer("bytes"), pairs=[64, 256], lengths=[512])


def test_synthetic_pair_ranges_are_checked():
    with pytest.raises(statex.StatexError, match="must be 1 <= low <= high"):
        parse_synthetic([{"kind": "mqar", "num_pairs": [64, 16]}])
