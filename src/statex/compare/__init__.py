"""``statex compare``: the StateX-vs-LPT protocol on any base, as one resumable command over a spec file.

spec.py        the typed spec (CompareSpec and its parts), read from YAML / JSON, flag overrides, validation
plan.py        the spec as stages (pretrain, train, eval), each with its directory and resolved request
evaluation.py  one model's evaluation at the family's lengths, as records
engine.py      run_compare: stages in order, pieces side by side on a CPU or in turn on a GPU, resume
parallel.py    independent pieces in processes of one thread each, with logs and a progress line
verdicts.py    means with 95% intervals over seeds, the verdict rule
report.py      results.json, report.md, capacity curves and heatmaps
cli.py         the ``statex compare`` command line
"""
from statex.compare.engine import run_compare
from statex.compare.plan import Plan, Stage, describe_plan, make_plan
from statex.compare.spec import CompareSpec, load_spec, spec_from_dict
from statex.compare.verdicts import mean_ci, verdicts

__all__ = ["CompareSpec", "Plan", "Stage", "describe_plan", "load_spec", "make_plan", "mean_ci", "run_compare",
           "spec_from_dict", "verdicts"]
