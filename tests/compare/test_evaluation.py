"""One model's evaluation in a comparison: every task of the spec's eval section reaches statex.eval with the
family's lengths, and the records carry family, variant and seed."""
import json

import statex
from statex.compare.evaluation import evaluate_stage, prompt_tokens
from statex.compare.plan import Stage
from statex.compare.spec import spec_from_dict


def test_a_stage_evaluates_every_task_of_the_spec(tmp_path):
    model = statex.build_model(statex.gla_config(257, 32, 2, num_heads=2), seed=0)
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "swde.jsonl").write_text(json.dumps({"text": "Name: Ann. Age: 31. Age:", "value": "31"}) + "\n")
    (tmp_path / "held.txt").write_text("the river flows to the sea. " * 200)
    spec = spec_from_dict({
        "families": {"gla": {"base": str(tmp_path / "m"), "context": 64, "variants": ["lpt"]}},
        "data": {"heldout": str(tmp_path / "held.txt")}, "train": {"seq_len": 128},
        "eval": {"mqar": {"pairs": [4, 16], "lengths": ["base", "post"], "n": 4},
                 "passkey": {"lengths": [384], "depths": [0.0, 1.0], "n": 2, "forced": True},
                 "niah": {"lengths": [384], "depths": [0.5], "n": 2},
                 "ppl": {"length": "post", "windows": 2},
                 "recall_qa": {"files": [str(tmp_path / "swde.jsonl")], "n": 1}}})
    lengths = {"mqar": [64, 128], "passkey": [384], "niah": [384], "ppl": [128]}
    stage = Stage("eval", "gla", "lpt", 3, tmp_path / "eval", model=tmp_path / "m", options={"lengths": lengths})
    rows, parts = evaluate_stage(stage, spec.eval, "bytes", str(tmp_path / "held.txt"), None, "cpu")
    assert {r["task"] for r in rows} == {"mqar", "passkey", "passkey_forced", "niah_single_1", "ppl", "recall",
                                         "state", "params"}
    assert all((r["family"], r["variant"], r["seed"]) == ("gla", "lpt", 3) for r in rows)
    assert {(r["params"]["length"], r["params"]["pairs"]) for r in rows if r["task"] == "mqar"} == {
        (64, 4), (64, 16), (128, 4), (128, 16)}
    assert {r["params"]["depth"] for r in rows if r["task"] == "passkey"} == {0.0, 1.0}
    assert next(r for r in rows if r["task"] == "ppl" and r["metric"] == "loss")["params"]["length"] == 128
    assert set(parts) == {"load", "mqar", "passkey", "niah", "ppl", "recall_qa"}
    assert prompt_tokens(rows) >= 4 * (2 * 64 + 2 * 128) + 2 * 2 * 384
