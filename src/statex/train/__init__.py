"""Long-context post-training (and pretraining) of statex models: ``train(TrainConfig(...))``."""
from statex.train.config import TrainConfig, read_config_file, resolve_config
from statex.train.schedule import learning_rate
from statex.train.optim_state import build_param_groups
from statex.train.trainer import TrainingInterrupted, TrainingStopped, train

__all__ = [
    "TrainConfig",
    "TrainingInterrupted",
    "TrainingStopped",
    "build_param_groups",
    "learning_rate",
    "read_config_file",
    "resolve_config",
    "train",
]
