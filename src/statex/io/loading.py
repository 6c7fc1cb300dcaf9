"""``load_model(path)``: detect the format of a checkpoint directory and load it with strict checks."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from statex.config import ModelConfig
from statex.errors import CheckpointError, ConfigError
from statex.files import read_limited
from statex.io.formats import CONFIG_READERS, RENAMERS, detect_format
from statex.io.weights import WeightSource, check_source, find_weight_file, load_into


def _config_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_file() and path.suffix == ".json":
        return path
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a model directory (expected a directory with config.json)")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: not a model directory (no config.json)")
    return path / "config.json"


CONFIG_LIMIT = 16 * 2**20  # a config.json is a few kilobytes; a larger one is not read whole


def read_config_json(path: str | Path) -> dict[str, Any]:
    config_file = _config_path(path)
    raw = read_limited(config_file, CONFIG_LIMIT, "config")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{config_file}: not valid JSON ({str(exc)[:120]})") from None
    except RecursionError:
        raise ConfigError(f"{config_file}: not a config (JSON nested too deeply)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{config_file}: expected a JSON object")
    return data


def load_config(path: str | Path) -> tuple[ModelConfig, str]:
    """(ModelConfig, source format) from a directory's config.json; no weights are read."""
    data = read_config_json(path)
    try:
        fmt = detect_format(data)
        return CONFIG_READERS[fmt](data), fmt
    except ConfigError as exc:
        raise ConfigError(f"{_config_path(path)}: {exc}") from None
    except (TypeError, ValueError, OverflowError, KeyError, AttributeError, RecursionError) as exc:
        # a value of a kind no reader expects: still one line naming the file
        raise ConfigError(f"{_config_path(path)}: cannot read this config ({type(exc).__name__}: "
                          f"{str(exc)[:120]})") from None


DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
               "float64": torch.float64}


def load_model(path: str | Path, dtype: torch.dtype | str | None = torch.float32,
               device: str | torch.device = "cpu", *, torch_dtype: torch.dtype | str | None = None,
               device_map: str | torch.device | None = None):
    """Load a statex, fla-hub GLA, mamba_ssm Mamba2 or HF Mamba2 directory.

    ``dtype`` (or transformers' ``torch_dtype``): floating parameters are cast to it, a torch dtype or its name
    (default fp32; ``None`` or ``"auto"`` keeps the stored dtype). ``device`` (or ``device_map`` naming one
    device; ``"auto"``: CUDA when available) is where the model goes.
    Missing or unexpected weights and shape mismatches raise ``CheckpointError`` naming the key, before any
    tensor data is read. Every parameter owns its memory (read tensor by tensor and copied out of the file),
    so the model computes the same bits as the one that was saved, on any machine.
    """
    from statex.models import build_model
    from statex.models.lm import require_model_memory

    dtype, device = resolve_placement(dtype if torch_dtype is None else torch_dtype,
                                       device if device_map is None else device_map)
    config, fmt = load_config(path)
    require_model_memory(config, dtype if isinstance(dtype, torch.dtype) else torch.float32, device)
    directory = _config_path(path).parent
    weights = find_weight_file(directory)
    model = build_model(config, device="meta")
    optional = {"lm_head.weight"} if config.tie_embeddings else set()
    with WeightSource(weights) as source:
        load_into(model, source, rename=RENAMERS[fmt], optional=optional,
                  dtype=None if dtype in (None, "auto") else dtype)
    model.tie_weights()
    leftover = [name for name, p in model.named_parameters() if p.is_meta]
    if leftover:
        raise CheckpointError(f"{weights}: missing weight {leftover[0]!r}")
    model.source_format = fmt
    return model.to(device).eval()


def resolve_placement(dtype, device) -> tuple[torch.dtype | str | None, str | torch.device]:
    """(dtype, device) from the forms transformers users pass; anything else refused with one line."""
    from statex.errors import StatexError

    if isinstance(dtype, str) and dtype != "auto":
        if dtype.removeprefix("torch.") not in DTYPE_NAMES:
            raise StatexError(f"dtype {dtype!r}: choose one of {', '.join(DTYPE_NAMES)} or auto")
        dtype = DTYPE_NAMES[dtype.removeprefix("torch.")]
    if isinstance(device, dict):
        raise StatexError("device_map: statex places the whole model on one device; give a device name "
                          "(cpu, cuda, cuda:1) or auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return dtype, device


def check_weights(path: str | Path) -> None:
    """Every error ``load_model(path)`` would raise about the weight files (missing, unreadable, truncated
    headers, wrong names, shapes or dtypes), found from the files' headers without reading tensor data."""
    from statex.models import build_model

    config, fmt = load_config(path)
    model = build_model(config, device="meta")
    optional = {"lm_head.weight"} if config.tie_embeddings else set()
    with WeightSource(find_weight_file(_config_path(path).parent)) as source:
        check_source(model, source, rename=RENAMERS[fmt], optional=optional)
