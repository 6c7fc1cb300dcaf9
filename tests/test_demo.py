"""The demo: the shipped bases and their recipe, the --quick pipeline end to end, resume, and the verdict rule."""
import dataclasses
import json

import pytest
import torch

import statex
from statex.demo import (apply_overrides, default_recipes, default_settings, filler_documents, mean_ci, read_record,
                         run_demo, shipped_base, verdicts)
from statex.demo.bases import build_initial_model, find_base, pretrain_base


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
    seeds = {r["seed"] for r in data if r["variant"] != "base"}
    assert seeds == set(range(default_settings(quick=True).seeds))
    assert {r["seed"] for r in data if r["variant"] == "base"} == {None}
    assert {r["task"] for r in data} == {"mqar", "heldout_loss", "state", "params"}
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "reproduced" in report and "Rule:" in report
    assert (tmp_path / "demo" / "gla_capacity.png").exists() and (tmp_path / "demo" / "mamba2_capacity.png").exists()
    assert len(summary["verdicts"]) == 4
    state = {(r["family"], r["variant"]): r["value"] for r in data if r["task"] == "state"}
    assert state[("gla", "statex-inherit")] > state[("gla", "lpt")] == state[("gla", "base")]
    assert state[("mamba2", "statex-preserve")] > state[("mamba2", "lpt")]
    expanded = statex.load_model(tmp_path / "demo" / "mamba2" / "statex-preserve" / "seed1" / "run" / "final")
    base_state = default_recipes()["mamba2"].model["d_state"]
    assert [s.d_state for s in expanded.config.layers] == [base_state, 4 * base_state]
    assert not (tmp_path / "demo" / "bases").exists()  # the shipped bases were used, not re-made

    # --resume runs nothing that finished; a different setting is refused
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "demo").rglob("records.json")}
    run_demo(tmp_path / "demo", quick=True, progress=False, resume=True)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "demo").rglob("records.json")} == before
    other = apply_overrides(default_settings(quick=True), steps=7)
    with pytest.raises(statex.StatexError, match="other settings"):
        run_demo(tmp_path / "demo", settings=other, quick=True, progress=False, resume=True)
    # more seeds: only the new seed's pieces run, the earlier ones are kept
    more = apply_overrides(default_settings(quick=True), seeds=3)
    summary = run_demo(tmp_path / "demo", settings=more, quick=True, progress=False, resume=True)
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert {r["seed"] for r in summary["records"] if r["variant"] == "lpt"} == {0, 1, 2}


def test_one_family_in_process_with_its_own_bases(tmp_path, capsys):
    summary = run_demo(tmp_path / "demo", quick=True, families=["gla"], progress=True, jobs=1, pretrain=True,
                       settings=apply_overrides(default_settings(quick=True), modes=["inherit"], heads=2, seeds=1))
    assert {r["family"] for r in summary["records"]} == {"gla"}
    assert {r["variant"] for r in summary["records"]} == {"base", "lpt", "statex-inherit"}
    assert "gla/statex-inherit/seed0 ..." in capsys.readouterr().out
    assert (tmp_path / "demo" / "bases" / "gla" / "recipe.json").exists()
    expanded = statex.load_model(tmp_path / "demo" / "gla" / "statex-inherit" / "seed0" / "run" / "final")
    assert [s.num_heads for s in expanded.config.layers] == [4, 2]
    # the bases of that run serve another one
    again = run_demo(tmp_path / "again", quick=True, families=["gla"], progress=False, jobs=1,
                     base_from=tmp_path / "demo", settings=apply_overrides(default_settings(quick=True), seeds=1))
    assert {r["variant"] for r in again["records"]} == {"base", "lpt", "statex-reinit", "statex-inherit"}
    assert str(tmp_path / "demo" / "bases" / "gla") in (tmp_path / "again" / "report.md").read_text()


def _rec(variant, seed, task, value, length=256, pairs=32):
    params = {"length": length, "pairs": pairs} if task == "mqar" else {}
    return {"family": "gla", "variant": variant, "seed": seed, "task": task, "value": value, "params": params}


def test_verdict_rule():
    settings = default_settings()
    records = [_rec("base", None, "mqar", 0.5), _rec("base", None, "mqar", 0.95, pairs=4)]
    for seed, (lpt, good, noisy) in enumerate([(0.50, 0.60, 0.70), (0.52, 0.61, 0.40), (0.48, 0.59, 0.55)]):
        records += [_rec("lpt", seed, "mqar", lpt), _rec("lpt", seed, "heldout_loss", 1.0),
                    _rec("lpt", seed, "mqar", 0.95, pairs=4), _rec("statex-good", seed, "mqar", 0.0, pairs=4),
                    _rec("statex-good", seed, "mqar", good), _rec("statex-good", seed, "heldout_loss", 1.02),
                    _rec("statex-noisy", seed, "mqar", noisy), _rec("statex-noisy", seed, "heldout_loss", 1.0),
                    _rec("statex-lossy", seed, "mqar", good), _rec("statex-lossy", seed, "heldout_loss", 1.2)]
    found = {v["variant"]: v for v in verdicts(records, settings)}
    # only the cell where the base is below the threshold counts (the 4-pair cell is ignored)
    assert found["statex-good"]["cells_past_capacity"] == 1
    assert found["statex-good"]["reproduced"] and found["statex-good"]["seeds_better"] == 3
    assert found["statex-good"]["gain"] == pytest.approx(0.1)
    assert not found["statex-noisy"]["reproduced"] and found["statex-noisy"]["seeds_better"] == 2
    assert not found["statex-lossy"]["reproduced"]  # held-out loss 20% above LPT's


def test_mean_ci():
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 * 1.0 / 3 ** 0.5)
    assert mean_ci([5.0])[0] == 5.0


def test_filler_is_deterministic_and_settings_are_sane():
    assert filler_documents(3, 1) == filler_documents(3, 1) != filler_documents(3, 2)
    settings = default_settings()
    recipes = default_recipes()
    for fam in settings.families:
        assert settings.seq_len > recipes[fam.family].seq_len  # post-training at a longer context
        assert fam.expand_layers and len(fam.modes) == 2
        assert max(fam.expand_layers) < recipes[fam.family].model["n_layer"]
    assert settings.eval_n >= 256 and settings.seeds >= 3
    with pytest.raises(ValueError, match="unknown StateX mode"):
        apply_overrides(settings, modes=["sideways"])
    with pytest.raises(ValueError, match="--seeds must be >= 1"):
        apply_overrides(settings, seeds=0)
    with pytest.raises(ValueError, match="out of range"):
        apply_overrides(settings, expand_layers="5", n_layers={"gla": 2, "mamba2": 2})
