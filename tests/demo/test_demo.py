"""The demo: the shipped bases and their recipe, and `statex demo` (compare over the shipped spec) end to end."""
import dataclasses
import json

import pytest
import torch

import statex
from statex.data.templates import filler_documents
from statex.demo import default_recipes, demo_spec_mapping, read_record, run_demo, shipped_base
from statex.demo.bases import build_initial_model, find_base, pretrain_base
from statex.errors import StatexError


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_shipped_base_was_made_by_the_committed_recipe(family):
    recipe = default_recipes()[family]
    record = read_record(shipped_base(family))
    # a changed recipe without re-made bases fails here: run `statex demo pretrain --out src/statex/demo/bases`
    assert record["recipe"] == recipe.to_dict()
    model = statex.load_model(shipped_base(family))
    fresh = build_initial_model(recipe, 257)
    assert model.config.to_dict()["layers"] == fresh.config.to_dict()["layers"]
    assert record["params"] == model.num_parameters() == fresh.num_parameters()
    # the recorded capacity curve: near perfect with few pairs, falling as the pairs outgrow the state
    acc = record["mqar_accuracy"]
    length, longest = recipe.seq_len, max(recipe.eval_lengths)
    assert acc[f"length={length} pairs=4"] >= 0.95
    curve = [acc[f"length={longest} pairs={p}"] for p in recipe.eval_pairs if 4 * p <= longest]
    assert all(later <= earlier + 0.02 for earlier, later in zip(curve, curve[1:])), curve
    assert curve[-1] < 0.9, curve
    # and the weights really are that base: a fresh sample of the easiest cell is recalled
    from statex.eval import evaluate

    tokenizer = statex.load_tokenizer("bytes")
    found = evaluate({"b": model}, ["mqar"], tokenizer, seed=99, n=32, batch_size=32, progress=False,
                     mqar_lengths=[length], pairs=[4])
    assert found[0].value >= 0.9


def test_the_recipe_still_runs(tmp_path):
    recipe = dataclasses.replace(default_recipes()["mamba2"], steps=3, batch=4, corpus_documents=50, eval_n=4,
                                 eval_pairs=(4,))
    out = pretrain_base(recipe, tmp_path / "mamba2", tmp_path / "work", progress=False)
    record = read_record(out)
    assert record["recipe"]["steps"] == 3 and record["tokens"] == 3 * 4 * recipe.seq_len
    assert set(record["mqar_accuracy"]) == {f"length={L} pairs=4" for L in recipe.eval_lengths}
    assert statex.load_model(out).config.layers[0].d_state == recipe.model["d_state"]
    assert find_base(tmp_path, "mamba2") == out
    with pytest.raises(statex.StatexError, match="no gla base"):
        find_base(tmp_path, "gla")


def test_initial_model_follows_the_recipe_init():
    recipe = default_recipes()["mamba2"]
    model = build_initial_model(recipe, 257)
    mixer = model.backbone.layers[0].mixer
    low, high = recipe.init["a_range"]
    a = torch.exp(mixer.A_log)
    assert bool(((a >= low) & (a <= high)).all())
    assert torch.equal(mixer.D, torch.zeros_like(mixer.D))
    assert abs(float(model.embed_tokens.weight.detach().std()) - recipe.init["embedding_std"]) < 0.05
    assert torch.equal(build_initial_model(recipe, 257).embed_tokens.weight, model.embed_tokens.weight)


def test_quick_demo_end_to_end_from_the_shipped_bases(tmp_path):
    summary = run_demo(tmp_path / "demo", quick=True, progress=False)
    data = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert {"family", "variant", "seed", "task", "setting", "metric", "value"} <= set(data[0])
    variants = {(r["family"], r["variant"]) for r in data}
    assert variants == {("gla", v) for v in ("base", "lpt", "statex-reinit", "statex-inherit")} | {
        ("mamba2", v) for v in ("base", "lpt", "statex-reinit", "statex-preserve")}
    assert {r["seed"] for r in data if r["variant"] != "base"} == {0, 1}
    assert {r["seed"] for r in data if r["variant"] == "base"} == {None}
    assert {r["task"] for r in data} == {"mqar", "ppl", "state", "params"}
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "beats LPT" in report and "Rule:" in report and "statex demo" in report
    assert (tmp_path / "demo" / "gla_capacity.png").exists() and (tmp_path / "demo" / "mamba2_capacity.png").exists()
    assert len(summary["verdicts"]) == 4
    state = {(r["family"], r["variant"]): r["value"] for r in data if r["task"] == "state"}
    assert state[("gla", "statex-inherit")] > state[("gla", "lpt")] == state[("gla", "base")]
    assert state[("mamba2", "statex-preserve")] > state[("mamba2", "lpt")]
    expanded = statex.load_model(tmp_path / "demo" / "mamba2" / "statex-preserve" / "seed1" / "train" / "final")
    base_state = default_recipes()["mamba2"].model["d_state"]
    assert [s.d_state for s in expanded.config.layers] == [base_state, 4 * base_state]
    assert not (tmp_path / "demo" / "bases").exists()  # the shipped bases were used, not re-made

    # --resume runs nothing that finished; a different setting is refused
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "demo").rglob("records.json")}
    run_demo(tmp_path / "demo", quick=True, progress=False, resume=True)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "demo").rglob("records.json")} == before
    with pytest.raises(StatexError, match="families.gla.train.steps differs"):
        run_demo(tmp_path / "demo", quick=True, progress=False, resume=True, steps=7)
    # more seeds: only the new seed's pieces run, the earlier ones are kept
    summary = run_demo(tmp_path / "demo", quick=True, progress=False, resume=True, seeds=3)
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert {r["seed"] for r in summary["records"] if r["variant"] == "lpt"} == {0, 1, 2}


def test_one_family_in_process_with_its_own_bases(tmp_path, capsys):
    summary = run_demo(tmp_path / "demo", quick=True, families=["gla"], progress=True, jobs=1, pretrain=True,
                       modes=["inherit"], heads=2, seeds=1)
    assert {r["family"] for r in summary["records"]} == {"gla"}
    assert {r["variant"] for r in summary["records"]} == {"base", "lpt", "statex-inherit"}
    assert "gla/statex-inherit/seed0 ..." in capsys.readouterr().out
    assert (tmp_path / "demo" / "bases" / "gla" / "recipe.json").exists()
    expanded = statex.load_model(tmp_path / "demo" / "gla" / "statex-inherit" / "seed0" / "train" / "final")
    assert [s.num_heads for s in expanded.config.layers] == [4, 2]
    # the bases of that run serve another one
    again = run_demo(tmp_path / "again", quick=True, families=["gla"], progress=False, jobs=1,
                     base_from=tmp_path / "demo", seeds=1)
    assert {r["variant"] for r in again["records"]} == {"base", "lpt", "statex-reinit", "statex-inherit"}
    assert str(tmp_path / "demo" / "bases" / "gla") in (tmp_path / "again" / "report.md").read_text()


def test_the_demo_flags_become_spec_overrides():
    raw = demo_spec_mapping(quick=True, families=["mamba2"], modes=["copy", "inherit"], factor=2, lr=1e-3,
                            expand_layers="all")
    fam = raw["families"]["mamba2"]
    assert list(raw["families"]) == ["mamba2"] and raw["seeds"] == 2 and fam["train"]["steps"] == 6
    assert fam["variants"] == ["lpt", {"mode": "copy", "layers": "all", "factor": 2}]
    assert fam["train"]["lr"] == 1e-3
    with pytest.raises(StatexError, match="unknown StateX mode"):
        demo_spec_mapping(modes=["sideways"])
    with pytest.raises(StatexError, match="--seeds must be >= 1"):
        demo_spec_mapping(seeds=0)
    with pytest.raises(StatexError, match="unknown family"):
        demo_spec_mapping(families=["rwkv"])


def test_filler_is_deterministic():
    assert filler_documents(3, 1) == filler_documents(3, 1) != filler_documents(3, 2)
