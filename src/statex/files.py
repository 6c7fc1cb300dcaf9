"""Files written whole or not at all: into a sibling temporary file (an ordinary file, so it gets the user's
default permissions), then renamed over the target. A reader never sees half a file; a crash leaves the old
one, or none, and at most a hidden ``.NAME.PID.tmp`` beside it."""
from __future__ import annotations

import os
from pathlib import Path


def temporary_sibling(path: str | Path) -> Path:
    path = Path(path)
    return path.parent / f".{path.name}.{os.getpid()}.tmp"


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; the parent directory must exist."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
