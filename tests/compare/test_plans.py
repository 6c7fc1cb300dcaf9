"""The shipped comparison specs, planned from configs alone: the paper's (against the config-only 1.3B fixtures),
the GPU-scale one, and the demo's."""
from pathlib import Path

import pytest

from statex.cli import main
from statex.compare.plan import make_plan
from statex.compare.spec import load_spec, parse_override
from statex.demo import SPEC

from .conftest import FIXTURES

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


@pytest.mark.parametrize("name,family,fixture,expanded", [
    ("gla-1.3b.yaml", "gla", "gla-1.3B", [0, 6, 12, 18]),
    ("gla-1.3b-reduced.yaml", "gla", "gla-1.3B", [0, 6, 12, 18]),
    ("mamba2-1.3b.yaml", "mamba2", "mamba2-1.3b", [0, 8, 16, 24, 32, 40]),
])
def test_the_paper_specs_plan_against_the_1_3b_configs(tmp_path, corpus, name, family, fixture, expanded):
    overrides = [parse_override(text) for text in (
        f"families.{family}.base={FIXTURES / fixture}", f"data.text={corpus / 'train'}", "data.tokenizer=bytes",
        f"data.heldout={corpus / 'heldout' / 'heldout.txt'}", "eval.mqar.pairs=[16, 64]")]
    plan = make_plan(load_spec(EXPERIMENTS / "paper" / name, overrides), tmp_path / "out")
    fam = plan.families[family]
    assert fam.context == 2048 and fam.post_len >= 16384
    statex_label = next(label for label in fam.variants if label != "lpt")
    before, after = fam.config.layers, fam.variants[statex_label].layers
    changed = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
    assert changed == expanded
    train = [s for s in plan.stages if s.kind == "train"]
    assert len(train) == len(fam.variants)  # one seed
    assert len({(s.train.steps, s.train.seq_len, s.train.lr, s.train.batch_size * s.train.grad_accum)
                for s in train}) == 1  # an identical budget for every variant
    if name == "gla-1.3b.yaml":
        assert train[0].tokens == 20000 * 8 * 65536  # the paper's ~10.5B tokens


def test_plan_prints_without_weights(tmp_path, corpus, capsys):
    assert main(["compare", str(EXPERIMENTS / "paper" / "gla-1.3b-reduced.yaml"), "--plan", "--out", str(tmp_path / "o"),
                 "--set", f"families.gla.base={FIXTURES / 'gla-1.3B'}", "--set", "data.tokenizer=bytes",
                 "--data", str(corpus), "--set", "eval.mqar.pairs=[16]"]) == 0
    text = capsys.readouterr().out
    assert "gla/statex-reinit/seed0/train" in text and "32,768,000 tokens" in text
    assert "statex-reinit" in text and not (tmp_path / "o").exists()


def test_the_gpu_scale_spec_plans(tmp_path, corpus):
    spec = load_spec(EXPERIMENTS / "gpu-30m" / "spec.yaml", [parse_override(f"data.text={corpus / 'train'}"),
                                                              parse_override(f"data.heldout={corpus}/heldout/heldout.txt"),
                                                              parse_override(f"data.haystack={corpus}/heldout/haystack.txt")])
    plan = make_plan(spec, tmp_path / "out")
    assert plan.vocab_size == 8192 and plan.tokenizer.endswith("tokenizer/tokenizer.json")
    assert [s.name for s in plan.stages if s.kind == "pretrain"] == ["gla/base/train", "mamba2/base/train"]
    for fam in plan.families.values():
        assert fam.context == 512 and fam.post_len == 2048 and fam.lengths["passkey"][-1] == 8 * fam.context
    from statex.summary import describe_config

    assert describe_config(plan.families["gla"].config)["total_params"] == 31_600_128
    assert describe_config(plan.families["mamba2"].config)["total_params"] == 24_042_048


def test_the_demo_spec_plans_its_documented_budget(tmp_path):
    plan = make_plan(load_spec(SPEC), tmp_path / "out")
    steps = {s.family: s.train.steps for s in plan.stages if s.kind == "train"}
    assert steps == {"gla": 600, "mamba2": 300}
    train = next(s.train for s in plan.stages if s.kind == "train" and s.family == "gla")
    assert (train.seq_len, train.batch_size, train.min_lr, train.warmup, train.save_every) == (256, 16, 3e-3 / 10, 30, 600)
    assert len(plan.pieces()) == 2 * (1 + 3 * 3)


@pytest.mark.parametrize("name", ["gla.yaml", "mamba2.yaml", "gla-recall-layers.yaml", "mamba2-recall-layers.yaml"])
def test_the_lm_recall_specs_plan_with_one_budget_per_family(tmp_path, corpus, name):
    spec = load_spec(EXPERIMENTS / "lm-recall" / name, [parse_override(f"data.text={corpus / 'train'}"),
                                                         parse_override(f"data.heldout={corpus}/heldout/heldout.txt"),
                                                         parse_override(f"data.haystack={corpus}/heldout/haystack.txt")])
    plan = make_plan(spec, tmp_path / "out")
    (fam,) = plan.families.values()
    assert fam.context == 512 and fam.post_len == 2048 and fam.lengths["mqar"] == [512, 1024, 2048, 4096]
    train = [s.train for s in plan.stages if s.kind == "train"]
    assert len(train) == 2 * len(fam.variants)
    assert len({(t.steps, t.seq_len, t.lr, t.batch_size, str(t.synthetic)) for t in train}) == 1


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_a_recall_layers_spec_is_its_family_spec_but_for_its_variants(corpus, family):
    data = [parse_override(f"data.{k}={corpus}/{v}") for k, v in (("text", "train"), ("heldout", "heldout/heldout.txt"),
                                                                   ("haystack", "heldout/haystack.txt"))]
    plain, recall = (load_spec(EXPERIMENTS / "lm-recall" / n, data).to_dict() for n in (f"{family}.yaml",
                                                                                        f"{family}-recall-layers.yaml"))
    assert any(v["layers"] == "recall:2" for v in recall["families"][family]["variants"])
    for spec in (plain, recall):
        spec.pop("name")
        spec["families"][family].pop("variants")
    assert plain == recall


def test_the_layer_choice_spec_is_the_demo_with_a_4_layer_gla_base_pretrained_twice_as_long(tmp_path):
    import dataclasses

    from statex.demo.settings import default_recipes

    paths = ("model", "data", "cache_dir", "out")
    plan = make_plan(load_spec(EXPERIMENTS / "layer-choice" / "spec.yaml"), tmp_path / "a")
    demo = make_plan(load_spec(SPEC), tmp_path / "d")

    def post(p):
        config = next(s.train for s in p.stages if s.kind == "train" and s.family == "gla" and s.variant == "lpt")
        return {k: v for k, v in dataclasses.asdict(config).items() if k not in paths}

    assert post(plan) == post(demo)  # the demo's GLA post-training budget, to the field
    recipe = default_recipes()["gla"]
    base = next(s.train for s in plan.stages if s.kind == "pretrain")
    assert (base.steps, base.batch_size, base.seq_len, base.lr, base.min_lr, base.warmup) == (
        2 * recipe.steps, recipe.batch, recipe.seq_len, recipe.lr, recipe.lr / 10, 2 * recipe.steps // 20)
    assert base.synthetic == [{"kind": "mqar", "weight": recipe.mix["mqar"], "num_pairs": list(recipe.pairs)}]
    assert base.text_weight == recipe.mix["text"]
    fam = plan.families["gla"]
    assert fam.config.n_layer == 4 and fam.config.d_model == recipe.model["d_model"]
    assert [v.layers for v in plan.spec.families["gla"].variants[1:]] == ["recall:1", "every:4"]
