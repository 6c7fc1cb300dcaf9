"""The command line: inspect on the paper configs, generate, expand, and one-line errors on bad input."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import statex
from statex.cli import main
from conftest import tiny_gla_config

FIXTURES = Path(__file__).parent / "fixtures"


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "statex", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_inspect_gla_1_3b_from_config_only(capsys):
    assert main(["inspect", str(FIXTURES / "gla-1.3B"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["total_state_elements"] == 12_582_912
    assert len(info["layers"]) == 24
    assert all(layer["state_elements"] == 524_288 for layer in info["layers"])
    assert {"index", "kind", "state_elements", "params", "conv_state_elements"} <= set(info["layers"][0])
    assert info["total_params"] == sum(layer["params"] for layer in info["layers"]) + 2 * 32000 * 2048 + 2048


def test_inspect_mamba2_1_3b_from_config_only(capsys):
    assert main(["inspect", str(FIXTURES / "mamba2-1.3b"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["total_state_elements"] == 25_165_824
    layer = info["layers"][0]
    assert layer["state_elements"] == 524_288 and layer["conv_state_elements"] == (4096 + 256) * 3
    # in_proj 8512x2048, conv 4352x(4+1), dt_bias/A_log/D 3x64, gated norm 4096, out_proj 2048x4096, norm 2048
    assert layer["params"] == 8512 * 2048 + 4352 * 5 + 3 * 64 + 4096 + 4096 * 2048 + 2048
    assert info["vocab_size"] == 50288  # 50277 padded to a multiple of 16


def test_inspect_text_table(capsys):
    assert main(["inspect", str(FIXTURES / "gla-1.3B")]) == 0
    out = capsys.readouterr().out
    assert "12,582,912" in out and "fla-gla" in out


def test_generate_cli_and_module_entry_point(tmp_path):
    model = statex.build_model(statex.gla_config(257, 32, 2, num_heads=2), seed=0)
    model.save_pretrained(tmp_path / "m")
    result = run_cli("generate", tmp_path / "m", "--prompt", "Hello", "--max-new-tokens", "4",
                     "--tokenizer", "bytes", "--no-eos-stop")
    assert result.returncode == 0, result.stderr
    ids = torch.tensor([list(b"Hello")])
    expected = statex.load_tokenizer("bytes").decode(model.generate(ids, 4)[0].tolist())
    assert result.stdout.rstrip("\n") == expected


def _assert_one_line_error(result, fragment):
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_bad_paths_and_flags_give_one_line_errors(tmp_path):
    _assert_one_line_error(run_cli("inspect", tmp_path / "missing"), "no such file or directory")
    _assert_one_line_error(run_cli("inspect", tmp_path), "no config.json")
    _assert_one_line_error(run_cli("inspect"), "the following arguments are required")
    _assert_one_line_error(run_cli("frobnicate"), "invalid choice")


@pytest.mark.parametrize("variable, value", [("STATEX_BACKEND", "cuda"), ("STATEX_SSD", "trition")])
def test_a_bad_kernel_choice_in_the_environment_stops_before_any_work(tmp_path, monkeypatch, capsys, variable,
                                                                      value):
    monkeypatch.setenv(variable, value)
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"statex: error: {variable}={value!r} is not one of " + {
        "STATEX_BACKEND": "auto, torch, fla", "STATEX_SSD": "triton, fla"}[variable]
    assert not out.exists()


def test_bad_checkpoints_give_one_line_errors_and_write_nothing(tmp_path):
    model = statex.build_model(tiny_gla_config(vocab_size=257))  # the byte tokenizer fits: the weights are read
    model.save_pretrained(tmp_path / "m")
    data = (tmp_path / "m" / "model.safetensors").read_bytes()
    (tmp_path / "m" / "model.safetensors").write_bytes(data[:100])
    before = sorted(p.name for p in tmp_path.rglob("*"))
    _assert_one_line_error(run_cli("generate", tmp_path / "m", "--prompt", "x"), "unreadable safetensors")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["layers"][1]["key_dim"] = 31
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    _assert_one_line_error(run_cli("inspect", tmp_path / "m"), "must divide key_dim=31")


def test_tokenizer_larger_than_vocab_is_refused(tmp_path):
    statex.build_model(tiny_gla_config()).save_pretrained(tmp_path / "m")  # vocab 61 < 257 bytes
    _assert_one_line_error(run_cli("generate", tmp_path / "m", "--prompt", "xyz", "--tokenizer", "bytes"),
                           "wrong tokenizer")
    _assert_one_line_error(run_cli("generate", tmp_path / "m", "--prompt", "x", "--tokenizer", tmp_path / "t.json"),
                           "tokenizer file not found")


def test_inspect_previews_gla_expansion(capsys):
    assert main(["inspect", str(FIXTURES / "gla-1.3B"), "--expand-layers", "every:6", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["total_state_elements"] == 18_874_368
    assert info["added_params"] == 6_144
    assert info["expanded_layers"] == [0, 6, 12, 18]
    assert info["before"]["total_state_elements"] == 12_582_912
    assert [layer["num_heads"] for layer in info["layers"][:7]] == [1, 4, 4, 4, 4, 4, 1]


def test_inspect_previews_mamba2_expansion(capsys):
    assert main(["inspect", str(FIXTURES / "mamba2-1.3b"), "--expand-layers", "0", "--factor", "4"]) == 0
    out = capsys.readouterr().out
    assert "+1,576,704 parameters" in out and "2,097,152" in out
    assert main(["inspect", str(FIXTURES / "mamba2-1.3b"), "--expand-layers", "0", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["added_params"] == 1_576_704 and info["layers"][0]["state_elements"] == 2_097_152


def test_expand_cli_writes_a_reloadable_model(tmp_path):
    model = statex.build_model(statex.mamba2_config(257, 32, 2, d_state=8, headdim=8), seed=0)
    model.save_pretrained(tmp_path / "src")
    (tmp_path / "src" / "tokenizer.json").write_text("{}")
    result = run_cli("expand", tmp_path / "src", tmp_path / "dst", "--layers", "every:2", "--mode", "preserve",
                     "--factor", "2", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert "+" in result.stdout and "wrote" in result.stdout
    loaded = statex.load_model(tmp_path / "dst")
    assert [s.d_state for s in loaded.config.layers] == [16, 8]
    assert (tmp_path / "dst" / "tokenizer.json").exists()
    expected = statex.expand(model, "every:2", mode="preserve", factor=2, seed=3)
    for k, v in expected.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    # the destination exists now: refused without --force, replaced with it
    _assert_one_line_error(run_cli("expand", tmp_path / "src", tmp_path / "dst", "--layers", "0"), "already exists")
    assert run_cli("expand", tmp_path / "src", tmp_path / "dst", "--layers", "0", "--force").returncode == 0
    assert [s.d_state for s in statex.load_model(tmp_path / "dst").config.layers] == [32, 8]


@pytest.mark.parametrize("flags,message", [
    (["--layers", "every:0"], "must be >= 1"),
    (["--layers", "7"], "out of range"),
    (["--layers", "0", "--heads", "3"], "must divide"),
    (["--layers", "0", "--mode", "copy"], "not a gla expansion mode"),
])
def test_expand_cli_bad_requests_write_nothing(tmp_path, flags, message):
    statex.build_model(statex.gla_config(257, 32, 2, num_heads=2), seed=0).save_pretrained(tmp_path / "src")
    _assert_one_line_error(run_cli("expand", tmp_path / "src", tmp_path / "dst", *flags), message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_expand_cli_factor_below_two(tmp_path):
    statex.build_model(statex.mamba2_config(257, 32, 2, d_state=8, headdim=8), seed=0).save_pretrained(tmp_path / "s")
    _assert_one_line_error(run_cli("expand", tmp_path / "s", tmp_path / "d", "--layers", "0", "--factor", "1"),
                           "factor must be an integer >= 2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def _mqar_layers_results(path, model, lost):
    """A results.json of `statex eval MODEL --tasks mqar_layers` in which emptying layer i costs ``lost[i]``."""
    cell = {"length": 64, "pairs": 8}
    rows = [{"model": model, "task": "mqar_layers", "setting": "", "metric": "accuracy", "value": 0.9, "n": 4,
             "params": {**cell, "mode": "intact", "layer": None}}]
    rows += [{"model": model, "task": "mqar_layers", "setting": "", "metric": "accuracy", "value": 0.9 - cost, "n": 4,
              "params": {**cell, "mode": "reset", "layer": i}} for i, cost in enumerate(lost)]
    path.write_text(json.dumps(rows))
    return path


def test_expand_cli_recall_layers_expands_where_the_model_recalls(tmp_path):
    statex.build_model(statex.mamba2_config(257, 32, 3, d_state=8, headdim=8), seed=0).save_pretrained(tmp_path / "src")
    results = _mqar_layers_results(tmp_path / "results.json", "src", [0.05, 0.0, 0.6])
    result = run_cli("expand", tmp_path / "src", tmp_path / "dst", "--layers", "recall:1", "--recall-from", results,
                     "--mode", "preserve", "--factor", "2")
    assert result.returncode == 0, result.stderr
    assert "layer 2, where the recall is held (emptying each costs MQAR 0.600; any other layer at most 0.050)" \
        in result.stdout
    assert [s.d_state for s in statex.load_config(tmp_path / "dst")[0].layers] == [8, 8, 16]


@pytest.mark.parametrize("flags,message", [
    (["--layers", "recall:1"], "needs --recall-from"),
    (["--layers", "0", "--recall-from", "r.json"], "--recall-from goes with --layers recall:K"),
    (["--layers", "recall:1", "--recall-from", "missing.json"], "not a readable statex eval results.json"),
    (["--layers", "recall:1", "--recall-from", "two.json"], "name one"),
    (["--layers", "recall:1", "--recall-from", "four.json"], "a 4-layer model, SRC has 3 layers"),
    (["--layers", "recall:4", "--recall-from", "r.json"], "4 layers asked for"),
])
def test_expand_cli_bad_recall_layers_write_nothing(tmp_path, flags, message):
    statex.build_model(statex.mamba2_config(257, 32, 3, d_state=8, headdim=8), seed=0).save_pretrained(tmp_path / "src")
    _mqar_layers_results(tmp_path / "r.json", "src", [0.1, 0.2, 0.3])
    two = json.loads(_mqar_layers_results(tmp_path / "b.json", "b", [0.1, 0.2, 0.3]).read_text())
    (tmp_path / "two.json").write_text(json.dumps(json.loads((tmp_path / "r.json").read_text()) + two))
    _mqar_layers_results(tmp_path / "four.json", "src", [0.1, 0.2, 0.3, 0.4])
    before = sorted(p.name for p in tmp_path.iterdir())
    _assert_one_line_error(run_cli("expand", tmp_path / "src", tmp_path / "dst", *flags, cwd=tmp_path), message)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_other_commands_refuse_recall_layers_with_a_pointer(capsys):
    assert main(["inspect", str(FIXTURES / "mamba2-1.3b"), "--expand-layers", "recall:2"]) == 2
    assert "statex expand (with --recall-from) and statex compare take it" in capsys.readouterr().err
