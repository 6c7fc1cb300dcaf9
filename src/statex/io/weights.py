"""Reading weight files (safetensors, pickled .bin read with weights_only=True, sharded indexes) and the
strict key/shape check that every import goes through."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from statex.errors import CheckpointError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def find_weight_file(directory: Path) -> Path:
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(f"{directory}: no weights found (expected one of {', '.join(WEIGHT_FILES)})")


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a weight file (or of every shard listed by an ``*.index.json``)."""
    if path.name.endswith(".index.json"):
        try:
            index = json.loads(path.read_text())
            shards = sorted(set(index["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{path}: not a valid shard index ({exc})") from None
        tensors: dict[str, torch.Tensor] = {}
        for shard in shards:
            tensors.update(read_tensors(path.parent / shard))
        return tensors
    if not path.is_file():
        raise CheckpointError(f"{path}: weight file not found")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    return _read_pickle(path)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: unreadable safetensors file ({_first_line(exc)})") from None


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses arbitrary objects; truncated files raise various errors
        raise CheckpointError(f"{path}: cannot be read as a tensor checkpoint ({_first_line(exc)})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
    return obj


def load_into(
    model: torch.nn.Module,
    tensors: dict[str, torch.Tensor],
    source: str,
    rename: Callable[[str], str] | None = None,
    optional: set[str] = frozenset(),
    dtype: torch.dtype | None = None,
) -> None:
    """Load ``tensors`` into ``model`` (usually built on the meta device) after a strict check.

    Every model key must be present (except those in ``optional``), no extra key may remain, and shapes
    must match; each violation is an error naming the key. ``rename`` maps a file's names to the model's.
    ``dtype`` casts floating tensors (None keeps the stored dtype).
    """
    if rename is not None:
        renamed: dict[str, torch.Tensor] = {}
        for key, value in tensors.items():
            new = rename(key)
            if new in renamed:
                raise CheckpointError(f"{source}: two entries map to the parameter {new!r}")
            renamed[new] = value
        tensors = renamed
    expected = {name: p for name, p in model.state_dict(keep_vars=True).items()}
    missing = [k for k in expected if k not in tensors and k not in optional]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{source}: missing weight {missing[0]!r}{more}")
    unexpected = [k for k in tensors if k not in expected]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{source}: unexpected weight {unexpected[0]!r}{more}")
    for key, value in tensors.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{source}: shape mismatch for {key!r}: checkpoint {tuple(value.shape)}, "
                f"config expects {tuple(expected[key].shape)}"
            )
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    model.load_state_dict(tensors, strict=False, assign=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
