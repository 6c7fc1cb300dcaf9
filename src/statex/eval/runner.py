"""``evaluate``: run tasks on one or more models and collect records."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from statex.errors import StatexError
from statex.eval.common import EvalContext, Record
from statex.eval.tasks import TASKS


def model_names(paths: list[str]) -> list[str]:
    """Short unique names: the directory name, with parents added until the names differ."""
    parts = [Path(p).resolve().parts for p in paths]
    depth = 1
    while depth < max(len(p) for p in parts):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
        depth += 1
    return [str(p) for p in paths]


def evaluate(models: dict[str, Any], tasks: list[str], tokenizer, seed: int = 0, n: int = 20, batch_size: int = 8,
             prefill_chunk: int = 2048, progress: bool = True, **options: Any) -> list[Record]:
    """``models``: name -> model (anything with ``__call__``/``generate`` like ``CausalLM``).
    ``options``: lengths, depths, pairs, mqar_lengths, niah_variants, niah_keys, haystack, recall_files,
    qa_max_tokens, ppl_file, icl_file, shots."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise StatexError(f"unknown task(s) {', '.join(unknown)} (choose from {', '.join(TASKS)})")
    records: list[Record] = []
    for name, model in models.items():
        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        if vocab is not None and tokenizer.vocab_size > vocab:
            raise StatexError(f"{name}: the tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary "
                              f"has {vocab}: wrong tokenizer for this model")
        model.eval()
        ctx = EvalContext(model, name, tokenizer, seed, n, batch_size, prefill_chunk, progress, options)
        with torch.no_grad():
            for task in tasks:
                records.extend(TASKS[task](ctx))
    return records
