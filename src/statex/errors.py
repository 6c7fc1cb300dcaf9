"""User-facing errors: the CLI prints these as one line on stderr and exits non-zero."""


class StatexError(Exception):
    """Base class for errors caused by the user's input (paths, configs, checkpoints, flags)."""


class ConfigError(StatexError):
    """A model config is inconsistent or incomplete."""


class CheckpointError(StatexError):
    """A checkpoint directory or weight file cannot be read or does not match its config."""
