"""A variant's layers chosen from the base's own mqar_layers evaluation (``layers: "recall:K"``)."""
import json
from pathlib import Path

import pytest

import statex
from statex.cli import main
from statex.compare.recall_layers import recall_count
from statex.errors import StatexError

from .conftest import TINY

RECALL_VARIANTS = '[lpt, {name: statex-recall, mode: preserve, layers: "recall:1", factor: 2}]'


@pytest.mark.parametrize("spec, count", [("recall:2", 2), (" Recall:3 ", 3), ("every:4", None), ("0,2", None),
                                         ([0, 2], None), (None, None)])
def test_recall_count(spec, count):
    assert recall_count(spec) == count


@pytest.mark.parametrize("spec", ["recall:", "recall:0", "recall:x", "recall:-1"])
def test_recall_count_refuses_a_bad_k(spec):
    with pytest.raises(StatexError, match="recall:K"):
        recall_count(spec)


def _argv(out, corpus, *extra):
    return ["compare", str(TINY), "--data", str(corpus), "--out", str(out), "--no-progress", "--jobs", "1",
            "--families", "mamba2", "--set", f"families.mamba2.variants={RECALL_VARIANTS}", *extra]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("recall") / "run"
    assert main(_argv(out, corpus, "--seeds", "1")) == 0
    return out


def _copy(finished, tmp_path):
    import shutil

    return Path(shutil.copytree(finished, tmp_path / "run"))


def test_a_recall_variant_expands_the_layers_the_base_needs_and_keeps_its_choice(finished, corpus, tmp_path):
    out = _copy(finished, tmp_path)
    base = json.loads((out / "mamba2" / "base" / "eval" / "records.json").read_text())
    whole = {(r["params"]["length"], r["params"]["pairs"]): r["value"] for r in base
             if r["task"] == "mqar_layers" and r["params"]["mode"] == "intact"}
    resets = [r for r in base if r["task"] == "mqar_layers" and r["params"]["mode"] == "reset"]
    lost = {layer: sum(whole[r["params"]["length"], r["params"]["pairs"]] - r["value"] for r in resets
                       if r["params"]["layer"] == layer) / len(whole) for layer in (0, 1)}
    expected = 0 if lost[0] >= lost[1] else 1
    kept = json.loads((out / "mamba2" / "statex-recall" / "layers.json").read_text())
    assert kept["layers"] == [expected]
    assert kept["costs"] == {str(k): pytest.approx(v, abs=1e-4) for k, v in lost.items()}
    trained = out / "mamba2" / "statex-recall" / "seed0" / "train"
    assert json.loads((trained / "train_config.json").read_text())["expand_layers"] == str(expected)
    config = statex.load_config(trained / "final")[0]
    assert [layer.d_state for layer in config.layers] == [16 if i == expected else 8 for i in range(2)]
    assert f"layers recall:1 (layers {expected})" in (out / "report.md").read_text()
    # a resumed run with another seed trains it on the kept choice, whatever the base's records say now
    other = 1 - expected
    (out / "mamba2" / "statex-recall" / "layers.json").write_text(json.dumps({"layers": [other]}))
    assert main(_argv(out, corpus, "--seeds", "2", "--resume")) == 0
    again = out / "mamba2" / "statex-recall" / "seed1" / "train"
    assert json.loads((again / "train_config.json").read_text())["expand_layers"] == str(other)
    assert [layer.d_state for layer in statex.load_config(again / "final")[0].layers] == [
        16 if i == other else 8 for i in range(2)]


def test_plan_names_the_layers_as_chosen_later(corpus, tmp_path, capsys):
    assert main(_argv(tmp_path / "plan", corpus, "--plan")) == 0
    printed = capsys.readouterr().out
    assert "statex-recall" in printed and "layers recall:1: chosen from the base's mqar_layers" in printed
    assert not (tmp_path / "plan").exists()


@pytest.mark.parametrize("override, message", [
    ("eval.mqar_layers=null", "needs eval.mqar_layers"),
    ('families.mamba2.variants=[lpt, {mode: preserve, layers: "recall:3", factor: 2}]', "of a 2-layer base"),
    ('families.mamba2.variants=[lpt, {mode: preserve, layers: "recall:two", factor: 2}]', "K of recall:K"),
])
def test_bad_recall_layers_are_refused_before_any_work(corpus, tmp_path, capsys, override, message):
    out = tmp_path / "refused"
    assert main(_argv(out, corpus, "--set", override)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()




@pytest.mark.parametrize("kept", ['{"layers": [5]}', '{"layers": [0, 1]}', '{"layers": [true]}', '{"nothing": 1}',
                                  "not json"])
def test_a_damaged_kept_choice_is_refused_with_its_path(finished, corpus, tmp_path, capsys, kept):
    out = _copy(finished, tmp_path)
    choice = out / "mamba2" / "statex-recall" / "layers.json"
    choice.write_text(kept)
    assert main(_argv(out, corpus, "--seeds", "2", "--resume")) == 2
    err = capsys.readouterr().err
    assert str(choice) in err and len(err.strip().splitlines()) == 1
    assert not (out / "mamba2" / "statex-recall" / "seed1").exists()
