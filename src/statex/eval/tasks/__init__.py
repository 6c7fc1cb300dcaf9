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

__all__ = ["TASKS"]
