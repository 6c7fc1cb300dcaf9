"""The GPU preset's evaluation of one stage's model: passkey and NIAH over depth x length, MQAR over pairs x
length, held-out perplexity, every task at one batch size so that one prewarm covers them; the seconds of each
part (and on CUDA the kernels each part compiled) go to stages.json."""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from statex.demo.gpu import GPUPreset, _Stage

EVAL_BATCH = 8  # every evaluation task (one prewarm covers them)
PREFILL_CHUNK = 2048  # prompts are read in chunks of this many tokens


def release_gpu() -> None:
    """Stages share one process: what a finished stage held on the GPU goes before the next one starts."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class _PartTimer:
    """Seconds per part of an evaluation, and on CUDA the Triton cache entries each part added (kernels compiled
    there rather than by the prewarm): the first GPU run's evaluations took 43-91 s for a few hundred thousand
    tokens, the first model of each architecture about 45 s more than the second."""

    def __init__(self, device: str):
        self.parts: dict[str, dict[str, float]] = {}
        self.cache = None
        if device == "cuda":
            from statex.ops.autotune import triton_cache_dir

            self.cache = triton_cache_dir()

    def run(self, part: str, work, *args):
        from statex.ops.prewarm import cache_entries

        begun, entries = time.time(), cache_entries(self.cache) if self.cache else 0
        result = work(*args)
        if self.cache is not None:
            import torch

            torch.cuda.synchronize()
        self.parts[part] = {"seconds": round(time.time() - begun, 1)}
        if self.cache is not None:
            self.parts[part]["new_cache_entries"] = cache_entries(self.cache) - entries
        return result


def evaluate_stage(settings: GPUPreset, stage: _Stage, paths, out: Path, device: str,
                   parts: dict | None = None) -> list[dict[str, Any]]:
    """Every task of the preset on the stage's final model (``device``: cpu or cuda); records as dicts with
    family and variant. ``parts``, when given, receives the seconds of each part (_PartTimer)."""
    import statex
    from statex.eval import evaluate
    from statex.eval.tasks import passkey

    timer = _PartTimer(device)

    def load():
        loaded = statex.load_model(stage.final, device=device)
        if device == "cuda":  # every task at one batch size, so that one prewarm covers them all
            from statex.ops import prewarm

            prewarm.prepare(prewarm.forward_workloads(loaded.config.to_dict(), EVAL_BATCH, PREFILL_CHUNK,
                                                      decode=True))
        return loaded

    model = timer.run("load", load)
    tokenizer = statex.load_tokenizer(out / "tokenizer.json")
    info = statex.describe_model(model)
    name = f"{stage.family}-{stage.variant}"
    common = dict(seed=1234, n=settings.eval_n, progress=False, batch_size=EVAL_BATCH, prefill_chunk=PREFILL_CHUNK)
    lengths, depths = list(settings.eval_lengths), list(settings.eval_depths)
    tasks = {
        "passkey": lambda m: evaluate({name: m}, ["passkey"], tokenizer, lengths=lengths, depths=depths, **common),
        "niah": lambda m: evaluate({name: m}, ["niah"], tokenizer, lengths=lengths, depths=depths,
                                 niah_variants=[1, 2], haystack=str(paths["haystack"]), **common),
        "mqar": lambda m: evaluate({name: m}, ["mqar"], tokenizer, pairs=list(settings.eval_pairs),
                                 mqar_lengths=lengths, mqar_keys=settings.mqar_keys,
                                 **{**common, "n": settings.mqar_n or settings.eval_n}),
        # the passkey's answer scored teacher-forced (no generation): tells a model that never learned passkey
        # from a fault in generation, when the task scores zero
        "passkey_forced": lambda m: passkey.teacher_forced(m, tokenizer, name, lengths, settings.eval_n, 1234,
                                                           EVAL_BATCH, PREFILL_CHUNK),
        "ppl": lambda m: evaluate({name: m}, ["ppl"], tokenizer, ppl_file=str(paths["heldout"]),
                                lengths=[settings.heldout_length], **{**common, "n": settings.heldout_windows}),
    }
    records = []
    for task, work in tasks.items():
        records += timer.run(task, work, model)
    if parts is not None:
        parts.update(timer.parts)
    rows = [{"family": stage.family, "variant": stage.variant, "seed": settings.seed, "model": name,
             "task": r.task, "setting": r.setting, "metric": r.metric, "value": float(r.value), "n": int(r.n),
             "params": dict(r.params)} for r in records]
    del model
    release_gpu()
    for task, value in (("state", info["total_state_elements"]), ("params", info["total_params"])):
        rows.append({"family": stage.family, "variant": stage.variant, "seed": settings.seed, "model": name,
                     "task": task, "setting": "total", "metric": "count", "value": float(value), "n": 1,
                     "params": {}})
    return rows
