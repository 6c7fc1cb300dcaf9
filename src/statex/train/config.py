"""The training run's configuration: defaults < a YAML/JSON config file < command-line flags."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from statex.errors import StatexError
from statex.expand import DEFAULT_MODE
from statex.validation import check_field_types, merge_option_layers

CONFIG_FILE_LIMIT = 2**20  # an options file is a few hundred bytes

# what a resumed run must share with the run it continues (the data order, the model and the optimisation);
# the rest (steps, logging, saving, hardware) may change between resumes
RESUME_FIXED = ("model", "init", "data", "text_field", "tokenizer", "synthetic", "text_weight", "text_loss_weight",
                "loss_average", "state_passing",
                "heldout_sequences", "seq_len", "lr", "min_lr", "warmup", "schedule", "decay_fraction",
                "weight_decay", "beta1", "beta2", "eps", "clip", "seed", "precision", "expand_layers", "mode",
                "heads", "factor", "expand_seed", "keep_attn_norm", "keep_ssm_params", "dt_init")


@dataclass
class TrainConfig:
    # model: exactly one of ``model`` (a checkpoint directory) or ``init`` (a config.json for a fresh model)
    model: str | None = None
    init: str | None = None
    # data
    data: str | None = None  # .jsonl / .txt files or directories, comma-separated
    text_field: str = "text"
    tokenizer: str = "bytes"  # "bytes" or a tokenizer.json path
    cache_dir: str | None = None  # token cache (default OUT/token-cache); share it between runs
    synthetic: Any = None  # "mqar:0.3,passkey:0.1" or a list of {kind, weight, num_pairs}
    text_weight: float = 1.0
    text_loss_weight: float = 1.0  # the text tokens' weight in the loss (each synthetic source has its own)
    loss_average: str = "tokens"  # tokens: mean over labelled tokens; sequences: mean of per-sequence means
    heldout_sequences: int = 16
    probe_sequences: int = 32  # per synthetic source, at every evaluation: its loss and answer accuracy
    state_passing: float = 0.0  # probability that a micro-batch starts from the previous one's final state
    # optimisation
    seq_len: int = 2048
    batch_size: int = 1  # per process
    grad_accum: int = 1
    steps: int = 1000
    lr: float = 3e-4
    min_lr: float = 0.0
    warmup: int = 100
    schedule: str = "cosine"  # cosine | constant | wsd
    decay_fraction: float = 0.2  # wsd: the final fraction of steps that decays to min_lr
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    clip: float = 1.0  # 0 disables clipping
    seed: int = 0
    precision: str = "fp32"  # fp32 | bf16 (autocast, fp32 master weights) | pure-bf16 (reference code)
    grad_checkpoint: bool = False
    # bookkeeping
    out: str = "runs/train"
    save_every: int = 1000
    keep: int = 2
    resume: bool = False
    log_every: int = 10
    eval_every: int = 0  # 0: at every save
    tensorboard: bool = False
    progress: bool = True
    on_nonfinite: str = "stop"  # stop | skip
    max_skips: int = 20  # consecutive skipped steps before the run stops anyway
    # StateX expansion applied to the loaded model before training (fresh runs only)
    expand_layers: Any = None
    mode: str = DEFAULT_MODE
    heads: int = 1
    factor: int = 4
    expand_seed: int | None = None  # default: seed
    keep_attn_norm: bool = False
    keep_ssm_params: bool = False
    dt_init: str = "reset"
    # hardware
    device: str = "auto"  # auto | cpu | cuda
    fsdp: bool = False
    threads: int | None = None
    autotune: str | None = None  # CUDA: Triton autotuning fast | full | off (default STATEX_AUTOTUNE, else fast)
    stop_at_step: int | None = None  # stop after this step (with a checkpoint), to be continued with --resume

    def validate(self) -> "TrainConfig":
        check_field_types(self, "", label=lambda name: "--" + name.replace("_", "-"), error=StatexError)
        if (self.model is None) == (self.init is None):
            raise StatexError("give exactly one of --model (a checkpoint) or --init (a config.json for a fresh model)")
        if self.data is None and not self.synthetic:
            raise StatexError("no training data: give --data and/or --synthetic")
        for name in ("seq_len", "batch_size", "grad_accum", "steps", "save_every", "keep", "log_every"):
            if getattr(self, name) < 1:
                raise StatexError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if (self.warmup < 0 or self.heldout_sequences < 0 or self.probe_sequences < 0 or self.eval_every < 0
                or self.max_skips < 0):
            raise StatexError("--warmup, --heldout-sequences, --probe-sequences, --eval-every and --max-skips must "
                              "be >= 0")
        if self.threads is not None and self.threads < 1:
            raise StatexError(f"--threads must be >= 1, got {self.threads}")
        for name in ("seed", "expand_seed"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 2**63:
                raise StatexError(f"--{name.replace('_', '-')} must be in [0, 2^63), got {value}")
        if self.stop_at_step is not None and self.stop_at_step < 1:
            raise StatexError(f"--stop-at-step must be >= 1, got {self.stop_at_step}")
        if not str(self.out).strip():
            raise StatexError("--out: the output path is empty")
        if self.text_weight < 0 or self.weight_decay < 0 or self.clip < 0 or self.eps <= 0:
            raise StatexError("--text-weight, --weight-decay and --clip must be >= 0 and --eps > 0")
        if not (math.isfinite(self.text_loss_weight) and self.text_loss_weight >= 0):
            raise StatexError(f"--text-loss-weight must be a finite number >= 0, got {self.text_loss_weight}")
        if not 0 <= self.state_passing <= 1:
            raise StatexError(f"--state-passing must be a probability in [0, 1], got {self.state_passing}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise StatexError("--beta1 and --beta2 must be in [0, 1)")
        if self.expand_layers is not None and not isinstance(self.expand_layers, (str, int, list)):
            raise StatexError(f"--expand-layers must be a layer spec (every:P, 0,6,12, frac:F, all), "
                              f"got {self.expand_layers!r:.60}")
        if self.synthetic is not None and not isinstance(self.synthetic, (str, list)):
            raise StatexError(f"--synthetic must be a string like mqar:0.3 or a list of sources, "
                              f"got {self.synthetic!r:.60}")
        choices = {"schedule": ("cosine", "constant", "wsd"), "precision": ("fp32", "bf16", "pure-bf16"),
                   "on_nonfinite": ("stop", "skip"), "device": ("auto", "cpu", "cuda"),
                   "loss_average": ("tokens", "sequences")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise StatexError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                                  f"got {getattr(self, name)!r}")
        from statex.runtime.settings import AUTOTUNE_MODES as MODES

        if self.autotune is not None and self.autotune not in MODES:
            raise StatexError(f"--autotune must be one of {', '.join(MODES)}, got {self.autotune!r}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise StatexError("need 0 <= --min-lr <= --lr and --lr > 0")
        if not 0 < self.decay_fraction <= 1:
            raise StatexError("--decay-fraction must be in (0, 1]")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read_config_file(path: str | Path) -> dict[str, Any]:
    data = read_mapping_file(path, CONFIG_FILE_LIMIT, "config file")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def read_mapping_file(path: str | Path, limit: int, what: str) -> dict[str, Any]:
    """The mapping a YAML (.yaml / .yml) or JSON file holds: at most ``limit`` bytes of UTF-8, no YAML aliases,
    one-line errors naming the file."""
    from statex.files import read_limited

    path = Path(path)
    try:
        text = read_limited(path, limit, what).decode("utf-8")
    except UnicodeDecodeError:
        raise StatexError(f"{path}: the {what} is not UTF-8 text") from None
    if path.suffix in (".yaml", ".yml"):
        data = read_yaml(text, path)
    else:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise StatexError(f"{path}: invalid JSON ({exc})") from None
        except RecursionError:
            raise StatexError(f"{path}: invalid JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise StatexError(f"{path}: the {what} must hold a mapping of names to values")
    return data


def read_yaml(text: str, path: str | Path):
    """``yaml.safe_load`` without anchors and aliases: an options file has no use for them, and nested aliases
    expand exponentially (the "billion laughs" file) as soon as the values are copied or printed."""
    import yaml

    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise StatexError(f"{path}: YAML aliases (*name) are not allowed in a config file")
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise StatexError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise StatexError(f"{path}: invalid YAML (nested too deeply)") from None


def check_resumable(config: TrainConfig, previous: dict[str, Any], world_size: int) -> None:
    """Refuse to resume with settings that change what the run computes, naming the first changed field."""
    for name in RESUME_FIXED:
        if name in previous and previous[name] != getattr(config, name):
            raise StatexError(f"--resume: {name} was {previous[name]!r:.60} in this run, now "
                              f"{getattr(config, name)!r:.60}; resume with the same value or start a new --out")
    if all(k in previous for k in ("batch_size", "grad_accum", "world_size")):
        before = previous["batch_size"] * previous["grad_accum"] * previous["world_size"]
        now = config.batch_size * config.grad_accum * world_size
        if before != now:
            raise StatexError(f"--resume: this run takes {before} sequences per step (processes x --batch-size x "
                              f"--grad-accum), now {now}; keep the global batch")


def resolve_config(file_values: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the config file's values, then explicitly given flags."""
    merged = merge_option_layers(TrainConfig, file_values, overrides, "training", error=StatexError)
    try:
        return TrainConfig(**merged).validate()
    except TypeError as exc:
        raise StatexError(str(exc)) from None
