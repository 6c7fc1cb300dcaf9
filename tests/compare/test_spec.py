"""The comparison spec: reading, overrides, validation with one-line errors naming the field, the resume check."""
import json

import pytest

from statex.compare.spec import (apply_override, changed_field, load_spec, parse_override, read_spec_file,
                                 spec_from_dict)
from statex.demo import SPEC
from statex.errors import StatexError

from .conftest import TINY


def _tiny(**changes):
    raw = read_spec_file(TINY)
    for path, value in changes.items():
        apply_override(raw, path.split("."), value)
    return raw


def test_the_shipped_specs_load(corpus):
    spec = load_spec(SPEC)
    assert list(spec.families) == ["gla", "mamba2"] and spec.seed_list == [0, 1, 2]
    assert spec.families["gla"].base.path.endswith("demo/bases/gla")  # relative to the spec file
    assert [v.label for v in spec.families["gla"].variants] == ["lpt", "statex-reinit", "statex-inherit"]
    tiny = load_spec(TINY, [parse_override(f"data.text={corpus}/train"),
                            parse_override(f"data.haystack={corpus}/heldout/haystack.txt"),
                            parse_override(f"data.heldout={corpus}/heldout/heldout.txt")])
    assert tiny.families["mamba2"].base.model["model_type"] == "mamba2"


def test_overrides():
    assert parse_override("train.steps=100") == (["train", "steps"], 100)
    assert parse_override("eval.mqar.pairs=[4, 8]") == (["eval", "mqar", "pairs"], [4, 8])
    assert parse_override("families.gla.base=/x") == (["families", "gla", "base"], "/x")
    assert parse_override("train.lr=2e-3") == (["train", "lr"], 2e-3)  # YAML 1.1 would read a string
    for bad in ("train.steps", "=3", "a..b=1"):
        with pytest.raises(StatexError, match="expected FIELD.PATH=VALUE"):
            parse_override(bad)
    raw = {"families": {"gla": {"base": "some/path"}}}
    apply_override(raw, ["families", "gla", "base", "path"], "other")  # a path base becomes {path: ...}
    assert raw["families"]["gla"]["base"] == {"path": "other"}
    with pytest.raises(StatexError, match="is not a mapping"):
        apply_override({"seeds": 3}, ["seeds", "x"], 1)


@pytest.mark.parametrize("path,value,message", [
    ("seeds", 0, "seeds must be between 1 and 1000"),
    ("seeds", [1, 1], "distinct integers"),
    ("seeds", "3", "seeds: a count or a list"),
    ("device", "tpu", "device must be auto, cpu or cuda"),
    ("name", 5, "name must be a string"),
    ("extra", 1, "extra: unknown field"),
    ("train.model", "x", "train.model: set by the comparison itself"),
    ("train.seqlen", 5, "train.seqlen: unknown training option"),
    ("train.seq_len", "long", "families.gla.train: --seq-len must be an integer"),
    ("train.checkpoints", 0, "checkpoints must be an integer >= 1"),
    ("train.min_lr_ratio", 2, "min_lr_ratio must be a number in [0, 1]"),
    ("families.gla.variants", ["statex-x"], "needs an lpt variant"),
    ("families.gla.variants", ["lpt", {"mode": "sideways", "layers": "1"}], "unknown StateX mode 'sideways'"),
    ("families.gla.variants", ["lpt", {"mode": "inherit"}], "layers: required for a StateX mode"),
    ("families.gla.variants", ["lpt", {"mode": "inherit", "layers": "7"}], "families.gla.variants statex-inherit"),
    ("families.gla.variants", ["lpt", {"mode": "preserve", "layers": "1"}], "not a gla expansion mode"),
    ("families.gla.variants", ["lpt", "lpt"], "names must be distinct"),
    ("families.gla.variants", ["lpt", {"mode": "inherit", "layers": "1", "heads": "2"}], "heads must be an integer"),
    ("families.gla.base.model.model_type", "rwkv", "model_type must be gla or mamba2"),
    ("families.gla.base.init", {"D": 0.0}, "belong to Mamba2 models"),
    ("families.gla.base.init", {"embed": 1}, "unknown init option"),
    ("families.gla.base.path", "x", "give exactly one of a checkpoint path or a model"),
    ("families.gla.context", 0, "context must be >= 1"),
    ("data.tokenizer", {"bpe": 10}, "a vocabulary size in [257"),
    ("data.tokenizer", 5, "data.tokenizer must be bytes"),
    ("data.heldout", "/nowhere.txt", "data.heldout /nowhere.txt: no such file"),
    ("eval.mqar.pairs", [0], "eval.mqar.pairs: a list of integers >= 1"),
    ("eval.mqar.lengths", ["middle"], "eval.mqar.lengths: 'middle' is not a length"),
    ("eval.passkey.depths", [1.5], "eval.passkey.depths: numbers in [0, 1]"),
    ("eval.niah.variants", [4], "niah-variants: choose from 1, 2, 3"),
    ("eval.mqar", {"pairs": [1000], "lengths": [64]}, "no cell fits"),
    ("eval", {}, "eval: no task"),
    ("verdict.capacity_threshold", 2, "capacity_threshold and recall_floor must be in [0, 1]"),
    ("verdict.min_gain", "big", "verdict.min_gain must be a number"),
])
def test_errors_name_the_field(corpus, path, value, message):
    from statex.compare.plan import make_plan

    raw = _tiny(**{"data.text": str(corpus / "train"), "data.heldout": str(corpus / "heldout" / "heldout.txt"),
                   "data.haystack": str(corpus / "heldout" / "haystack.txt")})
    apply_override(raw, path.split("."), value)
    with pytest.raises(StatexError, match=message.replace("[", r"\[").replace("(", r"\(")):
        make_plan(spec_from_dict(raw), "/tmp/unused-out")


def test_a_spec_file_is_bounded_and_safe(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("a: &a [1, 2]\nb: [*a, *a]\n")
    with pytest.raises(StatexError, match="YAML aliases"):
        read_spec_file(bomb)
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(StatexError, match="must hold a mapping"):
        read_spec_file(tmp_path / "list.json")
    with pytest.raises(StatexError, match="no such spec file"):
        read_spec_file(tmp_path / "missing.yaml")
    (tmp_path / "big.json").write_text(" " * (2**20 + 1))
    with pytest.raises(StatexError):
        read_spec_file(tmp_path / "big.json")


def test_changed_field_names_the_first_difference():
    before = json.loads(json.dumps({"train": {"lr": 1.0, "steps": 3}, "families": {"gla": {"variants": [1, 2]}}}))
    assert changed_field(before, before) is None
    assert changed_field(before, {**before, "train": {"lr": 2.0, "steps": 3}}) == "train.lr"
    assert changed_field(before, {**before, "families": {"gla": {"variants": [1]}}}) == "families.gla.variants"
    assert changed_field(before, {**before, "new": 1}) == "new"
