"""statex: StateX post-training state expansion for GLA and Mamba2 language models.

Public API (the CLI uses only these):
- configs: ``ModelConfig``, ``GLASpec``, ``Mamba2Spec``, ``gla_config``, ``mamba2_config``
- models: ``build_model``, ``load_model``, ``load_config``, ``CausalLM``, ``GLAForCausalLM``, ``Mamba2ForCausalLM``
  (``.from_pretrained``, ``.generate``, ``.save_pretrained``)
- reports: ``describe_model`` (per-layer shapes, state sizes, parameter counts)
"""
from statex.config import GLASpec, Mamba2Spec, ModelConfig, gla_config, mamba2_config
from statex.expand import expand, expand_config, plan_expansion, select_layers
from statex.errors import CheckpointError, ConfigError, StatexError
from statex.summary import (
    describe_config,
    describe_expansion,
    describe_model,
    format_description,
    format_expansion,
)
from statex.data import load_tokenizer, train_bpe_tokenizer
from statex.io import load_config, load_model, save_model
from statex.models import CausalLM, CausalLMOutput, GLAForCausalLM, Mamba2ForCausalLM, RecurrentState, build_model
from statex.train import TrainConfig, TrainingInterrupted, TrainingStopped, train

__version__ = "0.1.0"

__all__ = [
    "CausalLM",
    "CausalLMOutput",
    "GLAForCausalLM",
    "Mamba2ForCausalLM",
    "CheckpointError",
    "ConfigError",
    "GLASpec",
    "Mamba2Spec",
    "ModelConfig",
    "RecurrentState",
    "StatexError",
    "TrainConfig",
    "TrainingInterrupted",
    "TrainingStopped",
    "build_model",
    "describe_config",
    "expand",
    "expand_config",
    "describe_expansion",
    "describe_model",
    "format_description",
    "format_expansion",
    "gla_config",
    "load_config",
    "load_model",
    "load_tokenizer",
    "mamba2_config",
    "save_model",
    "plan_expansion",
    "select_layers",
    "train",
    "train_bpe_tokenizer",
]
