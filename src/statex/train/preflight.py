"""Every error of a training request that the configs and paths alone reveal (model or init config, expansion,
tokenizer against vocabulary, data paths, synthetic sources), found before any data or weights are read."""
from __future__ import annotations

from pathlib import Path

from statex.data.corpus import corpus_files
from statex.data.dataset import check_synthetic, parse_synthetic
from statex.errors import StatexError
from statex.train.config import TrainConfig


def check_request(config: TrainConfig, tokenizer, existing: list[Path]):
    """``existing``: the run's checkpoints (a resumed run takes its model config from the latest). Returns the
    ModelConfig the run will train (after any expansion)."""
    from statex import load_config, plan_expansion

    if config.resume and existing:
        model_config, _ = load_config(existing[-1] / "model")
    else:
        model_config, _ = load_config(config.model if config.model is not None else config.init)
        if config.expand_layers is not None:
            _, model_config = plan_expansion(model_config, config.expand_layers, config.mode, heads=config.heads,
                                             factor=config.factor, dt_init=config.dt_init)
    if tokenizer.vocab_size > model_config.vocab_size:
        raise StatexError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary has "
                          f"{model_config.vocab_size}: wrong tokenizer for this model")
    if config.data is not None:
        corpus_files(config.data)
    check_synthetic(parse_synthetic(config.synthetic), tokenizer, config.seq_len)
    return model_config
