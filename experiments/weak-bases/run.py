"""Experiment: does StateX's gain over LPT in the CPU miniature need a base that recalls well at few pairs?
(At GPU scale, experiments/gpu-30m/, the bases recalled weakly and StateX did not beat LPT.)

    python experiments/weak-bases/run.py OUT STEPS [SEEDS]   # e.g. /tmp/weak 300 3

Pretrains both miniature bases by the shipped recipes (statex.demo.settings.default_recipes) with only STEPS
pretraining steps instead of 3,000 (the whole cosine schedule compressed, same seed, lr, data and mix), then runs
the default comparison from them: `statex demo --base-from OUT/bases --seeds SEEDS --out OUT/demo`. Compare its
report with docs/results.md's (the shipped bases: StateX inherit / preserve +0.17 / +0.16 over LPT)."""
import dataclasses
import subprocess
import sys
from pathlib import Path

from statex.demo.bases import pretrain_base
from statex.demo.settings import default_recipes

out, steps = Path(sys.argv[1]), int(sys.argv[2])
seeds = sys.argv[3] if len(sys.argv) > 3 else "3"
command = f"python experiments/weak-bases/run.py {out} {steps} {seeds}"
for family, recipe in default_recipes().items():
    base = out / "bases" / family
    if not (base / "recipe.json").exists():
        pretrain_base(dataclasses.replace(recipe, steps=steps), base, out / "work" / family, progress=False,
                      command=command)
        print(f"{family}: base of {steps} steps written to {base}", flush=True)
sys.exit(subprocess.call([sys.executable, "-m", "statex", "demo", "--base-from", str(out / "bases"), "--seeds", seeds,
                          "--out", str(out / "demo"), "--no-progress", "--resume"]))
