"""EvalConfig: defaults < a config file < flags, typed and validated before any model is loaded; TaskOptions refuse
names they do not know."""
import json

import pytest

import statex
from statex.cli import main
from statex.eval.config import EvalConfig, TaskOptions, resolve_eval_config


def test_defaults_file_flags():
    config = resolve_eval_config({"tasks": ["mqar"], "pairs": [4, 8], "n": 5}, {"pairs": "16,32", "lengths": "1k,2k"})
    assert config.tasks == ["mqar"] and config.pairs == [16, 32] and config.n == 5 and config.lengths == [1024, 2048]
    assert config.batch_size == EvalConfig().batch_size and config.task_options().pairs == [16, 32]
    for values, message in (({"tasks": ["mqar"], "colour": 1}, "unknown evaluation option"),
                            ({}, "nothing to do"), ({"tasks": ["nope"]}, "unknown task"),
                            ({"tasks": ["mqar"], "n": "many"}, "--n"), ({"tasks": ["mqar"], "lengths": "1x"},
                                                                       "cannot read the list")):
        with pytest.raises(statex.StatexError, match=message):
            resolve_eval_config(values)
    with pytest.raises(statex.StatexError, match="unknown evaluation option"):
        TaskOptions.of(pairs=[4], colour=1)


def test_cli_reads_a_config_file(tmp_path):
    statex.build_model(statex.gla_config(257, 32, 1, num_heads=2), seed=0).save_pretrained(tmp_path / "m")
    (tmp_path / "eval.json").write_text(json.dumps({"tasks": ["mqar"], "pairs": [2], "mqar_lengths": [16], "n": 3,
                                                    "no_plots": True}))
    assert main(["eval", str(tmp_path / "m"), "--config", str(tmp_path / "eval.json"), "--n", "2",
                 "--out", str(tmp_path / "report"), "--device", "cpu"]) == 0
    records = json.loads((tmp_path / "report" / "results.json").read_text())
    mqar = [r for r in records if r["task"] == "mqar"]
    assert len(mqar) == 1 and mqar[0]["n"] == 2 and mqar[0]["params"] == {"length": 16, "pairs": 2}
    assert not list((tmp_path / "report").glob("*.png"))
