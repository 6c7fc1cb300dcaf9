"""From-scratch references beside a comparison: planned, trained and evaluated as the base is, kept out of the
verdicts, and summarised as accuracy against state size with each variant's share of the base-to-reference gap."""
import json
import math
from pathlib import Path

import pytest

import statex
from statex.cli import main
from statex.compare.references import reference_summary
from statex.compare.spec import spec_from_dict

SPEC = Path(__file__).parent.parent / "fixtures" / "compare" / "references.yaml"


def _spec(**families):
    base = {"model": {"model_type": "gla", "d_model": 32, "n_layer": 2, "num_heads": 4},
            "train": {"steps": 2, "seq_len": 64, "synthetic": "mqar:1"}}
    fam = {"base": base, "variants": ["lpt"], **families}
    return {"families": {"gla": fam}, "data": {"tokenizer": "ids:512"}, "train": {"steps": 1, "seq_len": 64},
            "eval": {"mqar": {"pairs": [4], "lengths": [64]}}}


def test_references_are_checked():
    spec_from_dict(_spec(references=[{"name": "big", "model": {"num_heads": 1}}]))
    for refs, message in (([{"name": "lpt"}], "must be a distinct name"), ([{"name": "a"}, {"name": "a"}], "distinct"),
                          ([{"name": "x", "model": {"vocab_size": 9}}], "are the base's"),
                          ([{"model": {}}], r"references\[0\]\.name: required")):
        with pytest.raises(statex.StatexError, match=message):
            spec_from_dict(_spec(references=refs))
    with pytest.raises(statex.StatexError, match=r"variants\[1\]\.train\.steps: a variant may set only state_passing"):
        spec_from_dict(_spec(variants=["lpt", {"mode": "reinit", "layers": "1", "train": {"steps": 9}}]))
    with pytest.raises(statex.StatexError, match="need a base pretrained here"):
        spec_from_dict({**_spec(), "families": {"gla": {"base": "somewhere", "context": 64,
                                                        "references": [{"name": "x"}]}}})


def test_summary_shares_against_a_hand_computed_example():
    def rows(variant, seed, cells, state):
        out = [{"family": "f", "variant": variant, "seed": seed, "task": "mqar", "setting": "", "metric": "accuracy",
                "value": v, "n": 8, "params": {"length": 64, "pairs": p}} for p, v in cells.items()]
        return out + [{"family": "f", "variant": variant, "seed": seed, "task": "state", "setting": "total",
                       "metric": "elements", "value": state, "n": 1, "params": {}}]

    records = (rows("base", None, {4: 1.0, 8: 0.4, 16: 0.2}, 100) + rows("4x", None, {4: 1.0, 8: 0.8, 16: 0.6}, 400)
               + rows("2x", None, {4: 1.0, 8: 0.6, 16: 0.4}, 200)
               + rows("sx", 0, {4: 1.0, 8: 0.6, 16: 0.4}, 150) + rows("sx", 1, {4: 1.0, 8: 0.7, 16: 0.5}, 150))
    found = reference_summary(records, "f", ["2x", "4x"], 0.9, {"base": 1000, "sx": 1100})
    assert found["cells_past_capacity"] == [(64, 8), (64, 16)] and found["target"] == "4x"
    assert found["gap"] == pytest.approx(0.4)
    points = {p["model"]: p for p in found["points"]}
    assert points["sx"]["shares"] == pytest.approx([0.5, 0.75])
    assert points["sx"]["share"] == pytest.approx(0.625)
    assert points["sx"]["share_ci"] == pytest.approx(12.706 * (0.25 / math.sqrt(2)) / math.sqrt(2))
    assert points["2x"]["mean_past"] == pytest.approx(0.5) and math.isnan(points["2x"]["share"])
    assert points["sx"]["tokens"] == 1100
    assert reference_summary(records, "f", [], 0.9) is None


def test_study_runs_end_to_end(tmp_path):
    out = tmp_path / "run"
    assert main(["compare", str(SPEC), "--out", str(out), "--no-progress", "--jobs", "1"]) == 0
    stages = json.loads((out / "stages.json").read_text())
    for name in ("gla/2x-state/train", "gla/4x-state/train", "gla/4x-state/eval", "mamba2/4x-state/eval"):
        assert name in stages, name
    records = json.loads((out / "results.json").read_text())
    state = {(r["family"], r["variant"]): r["value"] for r in records if r["task"] == "state"}
    assert state[("gla", "4x-state")] == 2 * state[("gla", "2x-state")] == 4 * state[("gla", "base")]
    assert state[("mamba2", "4x-state")] == 4 * state[("mamba2", "base")]
    # a mixture's tokens are counted as read: 3/4 of the base's sequences are 32 long, 1/4 64 long
    assert 4 * 4 * 32 <= stages["gla/base/train"]["tokens"] < 4 * 4 * 64
    assert stages["gla/lpt/seed0/train"]["tokens"] == 2 * 2 * 128
    config = json.loads((out / "gla" / "inherit-passing" / "seed0" / "train" / "train_config.json").read_text())
    assert config["state_passing"] == 0.9 and config["tokenizer"] == "ids:512"
    other = json.loads((out / "gla" / "statex-inherit" / "seed0" / "train" / "train_config.json").read_text())
    assert other["state_passing"] == 0.0 and {k for k in config if config[k] != other[k]} == {"state_passing", "out"}
    report = (out / "report.md").read_text()
    assert "State size: mean MQAR accuracy" in report and "| 4x-state | from scratch |" in report
    assert (out / "gla_state.png").is_file() and (out / "mamba2_state.png").is_file()
    verdict_rows = [line for line in report.splitlines() if line.startswith("| gla | ")]
    assert verdict_rows and not any("x-state" in line for line in verdict_rows)  # references get no verdict
