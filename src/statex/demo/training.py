"""One training run of the demo, pretraining or post-training: ``statex.train`` on the generated corpus mixed
with synthetic MQAR, byte tokenizer, AdamW (0.9, 0.98), weight decay 0.1, 5% warmup then cosine to lr/10,
clipping 1.0, each sequence weighted equally (MQAR labels only its answers)."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def train_run(model: Path, out: Path, corpus: Path, cache_dir: Path, seq_len: int, batch: int, steps: int,
              lr: float, pairs: tuple[int, int], mix: dict[str, float], seed: int, progress: bool,
              threads: int | None = None, **expansion: Any) -> dict[str, Any]:
    """Train ``model`` (a model directory) into ``out``; ``expansion``: StateX options (expand_layers, mode,
    heads, factor), applied before the first step. Returns the trainer's summary."""
    from statex.train import train as train_run
    from statex.train import resolve_config

    synthetic = [{"kind": "mqar", "weight": mix["mqar"], "num_pairs": list(pairs)}]
    config = resolve_config({}, dict(
        model=str(model), data=str(corpus), tokenizer="bytes", cache_dir=str(cache_dir), synthetic=synthetic,
        text_weight=mix["text"], seq_len=seq_len, batch_size=batch, steps=steps, lr=lr, min_lr=lr / 10,
        warmup=max(1, steps // 20), schedule="cosine", weight_decay=0.1, beta2=0.98, clip=1.0, seed=seed,
        loss_average="sequences", out=str(out), save_every=steps, keep=1, log_every=max(1, steps // 20),
        heldout_sequences=8, progress=progress, threads=threads, **expansion))
    return train_run(config)
