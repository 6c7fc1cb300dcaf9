"""Checkpoint formats: ``load_model`` detects and reads statex, fla GLA, mamba_ssm and HF Mamba2 directories;
``save_model`` writes the project format."""
from statex.io.loading import load_config, load_model
from statex.io.own import save_model

__all__ = ["load_config", "load_model", "save_model"]
