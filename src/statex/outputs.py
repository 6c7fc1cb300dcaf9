"""The one guard every writing command passes its output path through, before any work.

Refused, each with one line: an empty path (an unset shell variable), the current directory or any directory
above it, a path that is, contains or lies inside one of the command's inputs, an existing file where a
directory is wanted (or the reverse), a parent that is a file or cannot be written, and an existing non-empty
output unless the command was told to replace it (``force``) or continues it (``resumable``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from statex.errors import StatexError
from statex.files import clean_stale_temporaries, probe_writable


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _related(a: Path, b: Path) -> str | None:
    if a == b:
        return "is"
    if b.is_relative_to(a):
        return "contains"
    if a.is_relative_to(b):
        return "lies inside"
    return None


def check_output(path: str | Path | None, *, flag: str, inputs: Iterable[str | Path | None] = (),
                 force: bool = False, kind: str = "directory", resumable: bool = False) -> Path:
    """Check an output path and return it. ``kind``: "directory" or "file". ``resumable``: an existing
    non-empty directory is accepted (the command continues what it finds there, e.g. a training run)."""
    if path is None or not str(path).strip():
        raise StatexError(f"{flag}: the output path is empty")
    out = Path(str(path))
    real = _resolved(out)
    cwd = _resolved(Path.cwd())
    if real == cwd or cwd.is_relative_to(real):
        where = "the current directory" if real == cwd else "a directory above the current one"
        raise StatexError(f"{flag} {out}: is {where}; name a new directory for the output")
    for source in inputs:
        if source is None or not str(source).strip():
            continue
        relation = _related(real, _resolved(Path(str(source))))
        if relation is not None:
            raise StatexError(f"{flag} {out}: {relation} the input {source}; choose an output apart from the inputs")
    if out.is_symlink() and not out.exists():
        raise StatexError(f"{flag} {out}: is a dangling symbolic link")
    if out.exists():
        if kind == "directory" and not out.is_dir():
            raise StatexError(f"{flag} {out}: exists and is not a directory")
        if kind == "file" and out.is_dir():
            raise StatexError(f"{flag} {out}: is a directory, expected a file path")
        occupied = out.is_file() or any(True for _ in out.iterdir())
        if occupied and not (force or resumable):
            raise StatexError(f"{flag} {out}: already exists (use --force to replace it)")
    probe_writable(out.parent)
    if resumable and out.is_dir():
        probe_writable(out)
    if out.parent.is_dir():
        clean_stale_temporaries(out.parent)
    return out
