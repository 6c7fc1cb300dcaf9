"""statex: StateX post-training state expansion for GLA and Mamba2 language models.

The names below (``__all__``) are the stable Python API:
- configs: ``ModelConfig``, ``GLASpec``, ``Mamba2Spec``, ``gla_config``, ``mamba2_config``
- models: ``build_model``, ``load_model``, ``load_config``, ``save_model``, ``CausalLM``, ``GLAForCausalLM``,
  ``Mamba2ForCausalLM`` (``.from_pretrained``, ``.generate``, ``.save_pretrained``)
- the StateX expansion: ``expand``, ``expand_config``, ``plan_expansion``, ``select_layers``
- tokenizers: ``load_tokenizer``, ``train_bpe_tokenizer``; training: ``train``, ``TrainConfig``
- reports: ``describe_model``, ``describe_config``, ``describe_expansion`` and their ``format_*`` tables
- errors: ``StatexError`` (one-line user errors), ``ConfigError``, ``CheckpointError``

Each subpackage has its own entry points beside these, which the command line uses too: ``statex.eval.evaluate``,
``statex.compare.run_compare``, ``statex.io.export.export_model``, ``statex.eval.lm_eval_adapter.StatexLM``.
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
