"""Tokenizers: the built-in byte-level one (no files needed) or a local HF ``tokenizer.json``.

Nothing is ever downloaded: a tokenizer is either ``bytes`` or a path on disk.
"""
from __future__ import annotations

from pathlib import Path

from statex.errors import StatexError


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, plus an end-of-document token (id 256). vocab_size = 257."""

    name = "bytes"
    eos_token_id = 256
    vocab_size = 257

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A local ``tokenizer.json`` read with the ``tokenizers`` library."""

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer

        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise StatexError(f"{path}: tokenizer file not found (give a tokenizer.json path or 'bytes')")
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust library raises a generic Exception on bad files
            raise StatexError(f"{path}: not a valid tokenizer.json ({str(exc).splitlines()[0][:200]})") from None
        self.name = str(path)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.eos_token_id = None
        for candidate in ("</s>", "<|endoftext|>", "<eos>", "<|eos|>", "[EOS]"):
            token_id = self._tok.token_to_id(candidate)
            if token_id is not None:
                self.eos_token_id = token_id
                break

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)


def load_tokenizer(spec: str | Path) -> ByteTokenizer | HFTokenizer:
    """``"bytes"`` for the built-in byte tokenizer, else a path to a tokenizer.json (or its directory)."""
    if str(spec) == "bytes":
        return ByteTokenizer()
    return HFTokenizer(spec)
