"""Reading weight files (safetensors, pickled .bin read with weights_only=True, sharded indexes) and the
strict key/shape check that every import goes through.

Tensors are read one at a time and copied into freshly allocated memory before the next one is read:
a loaded model never aliases the checkpoint file (safetensors' tensors live inside the file's memory map at
the header's offsets, so they are not 64-byte aligned, and some BLAS builds round differently on unaligned
data), and at most one full copy of the weights plus one tensor is held at any time.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Callable

import torch

from statex.errors import CheckpointError

INDEX_LIMIT = 64 * 2**20
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def find_weight_file(directory: Path) -> Path:
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(f"{directory}: no weights found (expected one of {', '.join(WEIGHT_FILES)})")


class WeightSource:
    """The tensors of one weight file, or of every shard an ``*.index.json`` lists, read lazily.

    ``shapes`` is known after opening (safetensors: from the headers, without reading any data);
    ``read(name)`` returns one tensor, which may be a view into the file's memory map: copy it, then drop it.
    Use as a context manager so that file handles and maps are released.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._where: dict[str, _File] = {}
        self._files: list[_File] = []
        try:
            for file in self._shard_paths():
                opened = _open(file)
                self._files.append(opened)
                for name, shape in opened.shapes().items():
                    if name in self.shapes:
                        raise CheckpointError(f"{self.path}: the weight {name!r} appears in two shards")
                    self.shapes[name] = shape
                    self._where[name] = opened
        except BaseException:
            self.close()
            raise

    def _shard_paths(self) -> list[Path]:
        if not self.path.name.endswith(".index.json"):
            return [self.path]
        from statex.files import read_limited

        try:
            index = json.loads(read_limited(self.path, INDEX_LIMIT, "shard index").decode("utf-8"))
            shards = sorted(set(index["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise CheckpointError(f"{self.path}: not a valid shard index ({str(exc)[:120]})") from None
        return [_contained_shard(self.path, shard) for shard in shards]

    def read(self, name: str) -> torch.Tensor:
        return self._where[name].read(name)

    def dtype(self, name: str) -> torch.dtype | None:
        return self._where[name].dtype(name)

    def close(self) -> None:
        for file in self._files:
            file.close()
        self._files, self._where = [], {}

    def __enter__(self) -> "WeightSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _contained_shard(index: Path, shard) -> Path:
    """A shard an index names, which must be a plain file name inside the model directory: an index can never
    make statex read a file elsewhere (``../x``, ``/etc/passwd``, ``sub/../../x``)."""
    if not isinstance(shard, str) or not shard or "\x00" in shard:
        raise CheckpointError(f"{index}: the shard name {shard!r:.80} is not a file name")
    relative = PurePosixPath(shard)
    if relative.is_absolute() or PureWindowsPath(shard).is_absolute() or ".." in relative.parts \
            or "\\" in shard or not relative.parts:
        raise CheckpointError(f"{index}: the shard {shard!r:.80} lies outside the model directory; refusing to read it")
    if relative.suffix not in (".safetensors", ".bin", ".pt"):
        raise CheckpointError(f"{index}: the shard {shard!r:.80} is not a weight file (.safetensors or .bin)")
    return index.parent / relative


class _File:
    def shapes(self) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    def read(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def dtype(self, name: str) -> torch.dtype | None:
        return None

    def close(self) -> None:
        pass


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


class _Safetensors(_File):
    def __init__(self, path: Path):
        from safetensors import SafetensorError, safe_open

        self.path, self._error = path, SafetensorError
        try:
            self.handle = safe_open(str(path), framework="pt", device="cpu")
            slices = {name: self.handle.get_slice(name) for name in self.handle.keys()}
            self._shapes = {name: tuple(piece.get_shape()) for name, piece in slices.items()}
            self._dtypes = {name: _SAFETENSORS_DTYPES.get(piece.get_dtype()) for name, piece in slices.items()}
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: unreadable safetensors file ({_first_line(exc)})") from None

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return self._shapes

    def dtype(self, name: str) -> torch.dtype | None:
        return self._dtypes.get(name)

    def read(self, name: str) -> torch.Tensor:
        try:
            return self.handle.get_tensor(name)
        except (self._error, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{self.path}: cannot read {name!r} ({_first_line(exc)})") from None

    def close(self) -> None:
        self.handle = None


class _Pickle(_File):
    def __init__(self, path: Path):
        self.path = path
        obj = _torch_load(path)
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
        for key, value in obj.items():
            if not isinstance(key, str) or not isinstance(value, torch.Tensor):
                raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        self.tensors: dict[str, torch.Tensor] = obj

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(t.shape) for name, t in self.tensors.items()}

    def dtype(self, name: str) -> torch.dtype | None:
        return self.tensors[name].dtype

    def read(self, name: str) -> torch.Tensor:
        return self.tensors.pop(name)  # released here once the caller has copied it

    def close(self) -> None:
        self.tensors = {}


def _torch_load(path: Path):
    """``torch.load(weights_only=True)``, memory-mapped where the file's format allows it (the zip format
    of torch >= 1.6), so that the pickle's tensors are not all resident at once."""
    with warnings.catch_warnings():  # torch warns about legacy files before refusing them; the error says it
        warnings.simplefilter("ignore")
        return _torch_load_quiet(path)


def _torch_load_quiet(path: Path):
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc) and "zipfile" not in str(exc):
            raise CheckpointError(f"{path}: cannot be read as a tensor checkpoint ({_first_line(exc)})") from None
    except Exception as exc:  # weights_only refuses arbitrary objects; truncated files raise various errors
        raise CheckpointError(f"{path}: cannot be read as a tensor checkpoint ({_first_line(exc)})") from None
    try:  # the legacy (pre-zip) format cannot be memory-mapped
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot be read as a tensor checkpoint ({_first_line(exc)})") from None


def _open(path: Path) -> _File:
    if not path.is_file():
        raise CheckpointError(f"{path}: weight file not found")
    return _Safetensors(path) if path.suffix == ".safetensors" else _Pickle(path)


def owned_copy(tensor: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``tensor`` (cast to ``dtype`` if floating) in a new, normally allocated (aligned), contiguous buffer."""
    target = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
    fresh = torch.empty(tensor.shape, dtype=target, device="cpu")
    fresh.copy_(tensor)
    return fresh


def load_into(
    model: torch.nn.Module,
    source: WeightSource,
    rename: Callable[[str], str] | None = None,
    optional: set[str] = frozenset(),
    dtype: torch.dtype | None = None,
) -> None:
    """Load ``source``'s tensors into ``model`` (usually built on the meta device) after a strict check.

    Every model key must be present (except those in ``optional``), no extra key may remain, and shapes
    must match; each violation is an error naming the key, raised before any tensor data is read.
    ``rename`` maps a file's names to the model's. ``dtype`` casts floating tensors (None keeps the stored
    dtype). Every parameter and buffer ends up in memory of its own (never a view into the file).
    """
    by_model_name = check_source(model, source, rename, optional)
    # one stored tensor at a time: read, copy into memory of its own, release
    owned = {key: owned_copy(source.read(stored), dtype) for key, stored in by_model_name.items()}
    model.load_state_dict(owned, strict=False, assign=True)


def check_source(model: torch.nn.Module, source: WeightSource, rename: Callable[[str], str] | None = None,
                 optional: set[str] = frozenset()) -> dict[str, str]:
    """The strict check of ``load_into`` alone (names, shapes, dtypes; no tensor data read). Returns the map
    from the model's names to the stored ones."""
    where = str(source.path)
    by_model_name: dict[str, str] = {}
    for stored in source.shapes:
        new = rename(stored) if rename is not None else stored
        if new in by_model_name:
            raise CheckpointError(f"{where}: two entries map to the parameter {new!r}")
        by_model_name[new] = stored
    expected = dict(model.state_dict(keep_vars=True))
    missing = [k for k in expected if k not in by_model_name and k not in optional]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{where}: missing weight {missing[0]!r}{more}")
    unexpected = [k for k in by_model_name if k not in expected]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{where}: unexpected weight {unexpected[0]!r}{more}")
    for key, stored in by_model_name.items():
        stored_dtype = source.dtype(stored)
        if stored_dtype is not None and expected[key].is_floating_point() and not stored_dtype.is_floating_point:
            raise CheckpointError(f"{where}: {key!r} is stored as {str(stored_dtype).replace('torch.', '')}, "
                                  "expected floating-point weights")
        if tuple(source.shapes[stored]) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{where}: shape mismatch for {key!r}: checkpoint {tuple(source.shapes[stored])}, "
                f"config expects {tuple(expected[key].shape)}"
            )
    return by_model_name


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
