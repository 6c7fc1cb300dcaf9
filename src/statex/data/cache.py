"""A one-time pre-tokenised cache of a corpus: every document tokenised, an end-of-document token appended,
all concatenated into one flat uint16 (vocab <= 65536) or uint32 memmap that serves corpora larger than memory.

The cache lives in ``cache_dir/<key>/`` with ``tokens.bin`` and ``meta.json``; the key hashes the files (path,
size, mtime), the tokenizer and the text field, so a changed corpus or tokenizer builds a new cache. It is
written to a temporary directory and renamed, so an interrupted build leaves nothing half-written.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from statex.data.corpus import corpus_files, iter_documents
from statex.errors import StatexError
from statex.files import clean_stale_temporaries, temporary_directory


def _cache_key(files: list[Path], tokenizer, text_field: str) -> str:
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    digest.update(f"tokenizer={tokenizer.fingerprint}|field={text_field}|eod={tokenizer.eos_token_id}".encode())
    return digest.hexdigest()[:16]


def build_token_cache(data, tokenizer, cache_dir: str | Path, text_field: str = "text", show_progress: bool = True,
                      batch_documents: int = 256) -> Path:
    """Tokenise ``data`` once into ``cache_dir`` and return the cache directory (reused when it exists)."""
    files = corpus_files(data)
    if tokenizer.eos_token_id is None:
        raise StatexError(f"tokenizer {tokenizer.name} has no end-of-document token; cannot pack documents")
    cache_dir = Path(cache_dir)
    target = cache_dir / _cache_key(files, tokenizer, text_field)
    if (target / "meta.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.uint32
    clean_stale_temporaries(cache_dir)
    tmp = temporary_directory(target)
    try:
        total = documents = 0
        with (tmp / "tokens.bin").open("wb") as out:
            batch: list[str] = []
            progress = tqdm(desc="tokenising", unit="doc", disable=not show_progress)

            def flush():
                nonlocal total, documents
                for ids in tokenizer.encode_batch(batch):
                    array = np.asarray(ids + [tokenizer.eos_token_id], dtype=dtype)
                    out.write(array.tobytes())
                    total += array.size
                documents += len(batch)
                progress.update(len(batch))
                batch.clear()

            for text in iter_documents(files, text_field):
                batch.append(text)
                if len(batch) >= batch_documents:
                    flush()
            if batch:
                flush()
            progress.close()
        meta = {"tokens": total, "documents": documents, "dtype": np.dtype(dtype).name,
                "tokenizer": tokenizer.name, "vocab_size": tokenizer.vocab_size,
                "eod_token_id": tokenizer.eos_token_id, "files": [str(f) for f in files], "text_field": text_field}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(tmp, target)
        except OSError:  # another process built the same cache meanwhile
            if not (target / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def open_token_cache(path: str | Path) -> tuple[np.memmap, dict]:
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise StatexError(f"{path}: not a token cache ({exc})") from None
    if meta["tokens"] == 0:
        raise StatexError(f"{path}: the corpus holds no tokens")
    tokens = np.memmap(path / "tokens.bin", dtype=meta["dtype"], mode="r", shape=(meta["tokens"],))
    return tokens, meta
