"""Tokenizers: the built-in byte-level one (no files needed), a local HF ``tokenizer.json``, or ``ids:N``: N opaque
token ids with no text at all, for models trained and evaluated on synthetic recall only (zoology's MQAR uses a
vocabulary of 8,192 ids).

Nothing is ever downloaded: a tokenizer is ``bytes``, ``ids:N`` or a path on disk.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from statex.errors import StatexError


MAX_VOCAB = 2**32  # token caches store ids as uint32
TRAINER_BYTES_PER_TOKEN = 128  # what the BPE trainer allocates per vocabulary entry up front (about 72), rounded up


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, plus an end-of-document token (id 256). vocab_size = 257."""

    name = "bytes"
    eos_token_id = 256
    bos_token_id = None
    vocab_size = 257

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    @property
    def fingerprint(self) -> str:
        return "bytes-v1"


class IdTokenizer:
    """``ids:N``: a vocabulary of N ids that stand for nothing (synthetic tasks draw ids directly). It has no end
    of document and cannot encode text: tasks that need text (corpora, passkey, perplexity) are refused."""

    eos_token_id = None
    bos_token_id = None

    def __init__(self, vocab_size: int):
        if not 2 <= vocab_size <= MAX_VOCAB:
            raise StatexError(f"tokenizer ids:{vocab_size}: the vocabulary size must be in [2, {MAX_VOCAB:,}]")
        self.vocab_size = vocab_size
        self.name = f"ids:{vocab_size}"

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        raise StatexError(f"tokenizer {self.name} has no text: it serves synthetic tasks only (use 'bytes' or a "
                          "tokenizer.json for text)")

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: list[int]) -> str:
        return " ".join(str(int(i)) for i in ids)

    @property
    def fingerprint(self) -> str:
        return f"ids-{self.vocab_size}"


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
        self._fingerprint = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        named = _special_tokens(path.parent)
        self.eos_token_id = self._first_id([named["eos_token"]] if "eos_token" in named else
                                           ["</s>", "<|endoftext|>", "<eos>", "<|eos|>", "[EOS]"])
        # a BOS only where the tokenizer's files name one (as transformers reads them): a bare tokenizer.json
        # keeps statex's behaviour of no BOS
        self.bos_token_id = self._first_id([named["bos_token"]]) if "bos_token" in named else None

    def _first_id(self, candidates) -> int | None:
        for candidate in candidates:
            token_id = self._tok.token_to_id(candidate) if candidate else None
            if token_id is not None:
                return token_id
        return None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """The ids of ``text``; ``add_special_tokens`` applies the tokenizer's post-processor (e.g. a leading
        BOS), as transformers' tokenizers do by default."""
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    @property
    def fingerprint(self) -> str:
        return self._fingerprint


SPECIAL_TOKEN_FILES = ("special_tokens_map.json", "tokenizer_config.json")


def _special_tokens(directory: Path) -> dict[str, str]:
    """{bos_token, eos_token}: the names transformers would read from the tokenizer's config files beside it."""
    import json

    found: dict[str, str] = {}
    for name in SPECIAL_TOKEN_FILES:  # tokenizer_config.json wins, as in transformers
        try:
            data = json.loads((directory / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        for key in ("bos_token", "eos_token"):
            value = data.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                found[key] = value
    return found


def check_vocab(tokenizer_size: int, vocab_size: int, where: str = "", what: str = "model") -> None:
    """A tokenizer whose ids would not all fit the model's embedding is the wrong one: one line, naming ``where``
    (a model's name or a spec field) when given."""
    if tokenizer_size > vocab_size:
        prefix = f"{where}: " if where else ""
        raise StatexError(f"{prefix}the tokenizer has {tokenizer_size} tokens but the {what}'s vocabulary has "
                          f"{vocab_size}: wrong tokenizer for this {what}")


def is_builtin(spec) -> bool:
    """A tokenizer that needs no file: ``bytes`` or ``ids:N``."""
    return str(spec) == "bytes" or str(spec).startswith("ids:")


def load_tokenizer(spec: str | Path) -> ByteTokenizer | IdTokenizer | HFTokenizer:
    """``"bytes"`` for the built-in byte tokenizer, ``"ids:N"`` for N text-less ids, else a path to a
    tokenizer.json (or its directory)."""
    if str(spec) == "bytes":
        return ByteTokenizer()
    if str(spec).startswith("ids:"):
        size = str(spec)[4:]
        if not size.isdigit():
            raise StatexError(f"tokenizer {spec}: expected ids:N with N a vocabulary size, e.g. ids:8192")
        return IdTokenizer(int(size))
    return HFTokenizer(spec)


def train_bpe_tokenizer(files, vocab_size: int, out: str | Path, min_frequency: int = 2,
                        eod_token: str = "<|endoftext|>", show_progress: bool = True) -> Path:
    """Train a byte-level BPE ``tokenizer.json`` on local text (JSONL ``text`` fields or .txt files).
    The end-of-document token gets id 0. Written atomically to ``out``."""
    import os

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from statex.data.corpus import corpus_files, iter_documents
    from statex.files import temporary_sibling

    from statex.resources import require_memory

    if vocab_size < 257 + 1:
        raise StatexError(f"vocab size {vocab_size} is too small for a byte-level BPE (at least 258)")
    if vocab_size > MAX_VOCAB:
        raise StatexError(f"vocab size {vocab_size:,} is larger than statex's token caches hold ({MAX_VOCAB:,})")
    require_memory(vocab_size * TRAINER_BYTES_PER_TOKEN, f"a BPE trainer for {vocab_size:,} tokens",
                   hint="use a smaller --vocab-size")
    paths = corpus_files(files)
    seen = {"characters": 0}

    def documents():
        for text in iter_documents(paths):
            seen["characters"] += len(text.strip())
            yield text

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[eod_token],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress)
    tokenizer.train_from_iterator(documents(), trainer=trainer)
    if seen["characters"] == 0:
        raise StatexError(f"{', '.join(str(p) for p in paths[:3])}: the corpus holds no text to learn a tokenizer from")
    out = Path(out)
    if out.is_dir():
        out = out / "tokenizer.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(out)
    try:
        tokenizer.save(str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    write_special_token_files(out.parent, eos=eod_token)
    return out


def write_special_token_files(directory: Path, eos: str, bos: str | None = None) -> list[Path]:
    """tokenizer_config.json and special_tokens_map.json for a tokenizer.json in ``directory``, so that
    transformers' ``AutoTokenizer`` / ``PreTrainedTokenizerFast`` load it with its EOS (and BOS). A file already
    there is kept as it is (it may be the user's). Returns the files written."""
    import json

    from statex.files import write_atomic

    special = {"eos_token": eos, **({"bos_token": bos} if bos else {})}
    contents = {"tokenizer_config.json": {"tokenizer_class": "PreTrainedTokenizerFast",
                                          "clean_up_tokenization_spaces": False, **special},
                "special_tokens_map.json": special}
    written = []
    for name, data in contents.items():
        if not (directory / name).exists():
            write_atomic(directory / name, json.dumps(data, indent=2) + "\n")
            written.append(directory / name)
    return written
