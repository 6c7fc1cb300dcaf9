"""Every error of a training request that the configs and paths alone reveal (model or init config, weight file
headers, expansion, tokenizer against vocabulary, data paths, synthetic sources, what fits in memory), found
before any data or weights are read and before anything is written."""
from __future__ import annotations

from pathlib import Path

from statex.data.corpus import corpus_files
from statex.data.dataset import check_synthetic, parse_synthetic, sequence_lengths
from statex.data.tokenizers import check_vocab
from statex.errors import StatexError
from statex.train.config import TrainConfig

# bytes per parameter while training with AdamW: fp32 weights, gradients and two moments
TRAINING_BYTES_PER_PARAM = 16


def check_request(config: TrainConfig, tokenizer, existing: list[Path], device=None):
    """``existing``: the run's checkpoints (a resumed run takes its model config from the newest readable one).
    Returns the ModelConfig the run will train (after any expansion)."""
    from statex.expand import plan_expansion
    from statex.io import load_config
    from statex.io.loading import check_weights
    from statex.train.checkpoint import latest_model_config

    model_config = latest_model_config(existing[-1].parent.parent) if config.resume and existing else None
    if model_config is None:
        model_config, _ = load_config(config.model if config.model is not None else config.init)
        if config.expand_layers is not None:
            _, model_config = plan_expansion(model_config, config.expand_layers, config.mode, heads=config.heads,
                                             factor=config.factor, dt_init=config.dt_init)
    check_vocab(tokenizer.vocab_size, model_config.vocab_size)
    if config.data is not None:
        if str(config.tokenizer).startswith("ids:"):
            raise StatexError(f"--tokenizer {config.tokenizer} has no text: it serves --synthetic data only (use "
                              "'bytes' or a tokenizer.json with --data)")
        corpus_files(config.data)
    check_synthetic(parse_synthetic(config.synthetic), tokenizer, config.seq_len)
    check_memory(config, model_config, device)
    if config.model is not None and not (config.resume and existing):
        check_weights(config.model)  # the headers only: last, as the one check that opens the weight files
    return model_config


def training_bytes(config: TrainConfig, model_config) -> int:
    """A lower bound of a training step's memory: the weights with their gradients and AdamW moments, plus
    the logits and one activation per layer of one micro-batch (the real figure is higher)."""
    longest = max([config.seq_len, *sequence_lengths(config.seq_len, parse_synthetic(config.synthetic), False)])
    tokens = config.batch_size * longest
    per_token = 4 * (3 * model_config.vocab_size + 2 * model_config.n_layer * model_config.d_model)
    return TRAINING_BYTES_PER_PARAM * model_config.parameter_count() + tokens * per_token


def check_memory(config: TrainConfig, model_config, device=None) -> None:
    from statex.resources import require_memory

    require_memory(training_bytes(config, model_config),
                   f"training with --seq-len {config.seq_len} and --batch-size {config.batch_size}", device,
                   hint="use a shorter --seq-len, a smaller --batch-size (with --grad-accum) or a smaller model")
