from statex.models.lm import CausalLM, CausalLMOutput, GLAForCausalLM, Mamba2ForCausalLM, RecurrentState, build_model

__all__ = [
    "CausalLM",
    "CausalLMOutput",
    "GLAForCausalLM",
    "Mamba2ForCausalLM",
    "RecurrentState",
    "build_model",
]
