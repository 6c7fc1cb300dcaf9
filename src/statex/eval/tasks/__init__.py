"""Evaluation tasks. Each module has a deterministic generator (by seed) and a scorer, and ``run(ctx)``."""
from statex.eval.tasks import icl, mqar, mqar_layers, niah, passkey, ppl, recall_qa

TASKS = {
    "passkey": passkey.run,
    "niah": niah.run,
    "mqar": mqar.run,
    "mqar_layers": mqar_layers.run,
    "recall": recall_qa.run,
    "ppl": ppl.run,
    "icl": icl.run,
}

# A task's version goes up when its prompts or scoring change so that its numbers do; a comparison evaluates a
# model again on --resume when a task it ran has moved on (a version absent from an older record is 1).
# niah 2: a text haystack's needle goes between two sentences (before: at any token boundary, often mid-word).
TASK_VERSIONS = {"passkey": 1, "niah": 2, "mqar": 1, "mqar_layers": 1, "recall": 1, "ppl": 1, "icl": 1}

__all__ = ["TASKS", "TASK_VERSIONS"]
