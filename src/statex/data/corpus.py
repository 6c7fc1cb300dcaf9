"""Reading documents from local text corpora: JSONL (one object per line, a text field), plain .txt (one
document per file), or directories of them (searched recursively, in sorted order)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from statex.errors import StatexError

TEXT_SUFFIXES = (".jsonl", ".txt")


def corpus_files(paths: str | Path | list[str | Path]) -> list[Path]:
    """The files a data argument names, in a deterministic order."""
    if isinstance(paths, (str, Path)):
        paths = [p for p in str(paths).split(",") if p]
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
            if not found:
                raise StatexError(f"{path}: no .jsonl or .txt files in this directory")
            files.extend(found)
        elif path.is_file():
            if path.suffix not in TEXT_SUFFIXES:
                raise StatexError(f"{path}: unsupported data file (expected .jsonl or .txt)")
            files.append(path)
        else:
            raise StatexError(f"{path}: no such data file or directory")
    if not files:
        raise StatexError("no data files given")
    return files


def iter_documents(files: list[Path], text_field: str = "text") -> Iterator[str]:
    """Yield each document's text. JSONL lines that are empty are skipped; a line that is not JSON or lacks
    the text field is an error naming the file and line."""
    for path in files:
        if path.suffix == ".txt":
            yield path.read_text(encoding="utf-8", errors="replace")
            continue
        with path.open(encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    raise StatexError(f"{path}:{number}: not a JSON line") from None
                if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                    raise StatexError(f"{path}:{number}: no string field {text_field!r}")
                yield record[text_field]
