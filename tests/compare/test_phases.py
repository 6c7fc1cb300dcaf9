"""Pretraining in phases: each phase a stage of its own that starts from the previous phase's final model (the
first from the init), with the phase's settings over the base's; the last phase is the base every later stage
reads."""
import json

import pytest
import torch

import statex
from statex.cli import main
from statex.compare.plan import make_plan
from statex.compare.spec import spec_from_dict


def _spec(phases, references=()):
    base = {"model": {"model_type": "gla", "d_model": 32, "n_layer": 2, "num_heads": 2},
            "train": {"steps": 2, "seq_len": 64, "batch_size": 2, "synthetic": "mqar:1"}, "phases": phases}
    return {"families": {"gla": {"base": base, "variants": ["lpt"], "references": list(references)}},
            "data": {"tokenizer": "ids:256"}, "seeds": 1, "device": "cpu",
            "train": {"steps": 1, "seq_len": 64, "batch_size": 2, "synthetic": "mqar:1"},
            "eval": {"mqar": {"pairs": [4], "lengths": [64], "n": 4}}}


def test_phases_are_checked():
    with pytest.raises(statex.StatexError, match=r"base\.phases\[1\]: a mapping of training settings"):
        spec_from_dict(_spec([{"steps": 3}, 5]))
    with pytest.raises(statex.StatexError, match=r"base\.phases\[0\]\.model: set by the comparison itself"):
        spec_from_dict(_spec([{"model": "x"}]))
    with pytest.raises(statex.StatexError, match="init, train and phases belong to a pretrained base"):
        spec_from_dict({**_spec([]), "families": {"gla": {"base": {"path": "x", "phases": [{"steps": 1}]},
                                                          "context": 64}}})


def test_each_phase_is_a_stage_that_trains_the_one_before(tmp_path):
    spec = spec_from_dict(_spec([{"steps": 3, "seq_len": 32}, {"lr": 1e-4}], references=[{"name": "big",
                                                                                           "model": {"num_heads": 1}}]))
    plan = make_plan(spec, tmp_path)
    pre = [s for s in plan.stages if s.kind == "pretrain"]
    assert [s.name for s in pre] == ["gla/base/phase1", "gla/base/train", "gla/big/phase1", "gla/big/train"]
    first, last = pre[0].train, pre[1].train
    assert (first.steps, first.seq_len, last.steps, last.seq_len, last.lr) == (3, 32, 2, 64, 1e-4)
    assert first.model == str(tmp_path / "gla" / "base" / "init")
    assert last.model == str(tmp_path / "gla" / "base" / "phase1" / "final")
    assert pre[3].train.model == str(tmp_path / "gla" / "big" / "phase1" / "final")
    assert plan.families["gla"].context == 64  # the last phase's length
    one = make_plan(spec_from_dict(_spec([])), tmp_path / "one")
    assert [s.name for s in one.stages if s.kind == "pretrain"] == ["gla/base/train"]


def test_a_later_phase_continues_from_the_earlier_ones_model(tmp_path):
    out = tmp_path / "run"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(_spec([{"lr": 3e-3}, {"lr": 1e-9, "warmup": 0}])))
    assert main(["compare", str(spec), "--out", str(out), "--no-progress", "--jobs", "1"]) == 0
    stages = json.loads((out / "stages.json").read_text())
    assert "gla/base/phase1" in stages and "gla/base/train" in stages
    load = lambda *parts: statex.load_model(out.joinpath(*parts)).state_dict()  # noqa: E731
    init, first, last = load("gla", "base", "init"), load("gla", "base", "phase1", "final"), \
        load("gla", "base", "train", "final")
    assert any(not torch.equal(init[k], first[k]) for k in init)  # phase 1 trained the init
    for k in first:  # phase 2 started from phase 1's model (lr 1e-9 leaves it where it was)
        torch.testing.assert_close(last[k], first[k], rtol=0, atol=1e-6)
    # each pretraining stage records its synthetic sources at its end, and the report prints them
    for name in ("gla/base/phase1", "gla/base/train"):
        probes = stages[name]["probes"]
        assert list(probes) == ["mqar 4-32 pairs T=64"]
        assert 0 <= probes["mqar 4-32 pairs T=64"]["accuracy"] <= 1
        assert f"| {name} | mqar 4-32 pairs T=64 | " in (out / "report.md").read_text()
    assert "probes" in stages["gla/lpt/seed0/train"]  # post-training records them too; the report shows pretraining's
    assert "| gla/lpt/seed0/train | mqar" not in (out / "report.md").read_text()
