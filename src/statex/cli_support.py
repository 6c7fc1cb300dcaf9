"""What several ``statex`` subcommands share: the --device and --autotune flags, the tokenizer a model directory
implies, and list flags."""
from __future__ import annotations

import argparse
from pathlib import Path

import statex


def device_from_flag(name: str):
    import torch

    if name not in ("auto", "cpu", "cuda"):
        raise statex.StatexError(f"--device must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise statex.StatexError("--device cuda: no CUDA device is available")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def check_vocab(tokenizer, config, name: str) -> None:
    from statex.data.tokenizers import check_vocab as check

    check(tokenizer.vocab_size, config.vocab_size, name)


def check_seed(seed: int | None, flag: str = "--seed") -> None:
    if seed is not None and not 0 <= seed < 2**63:
        raise statex.StatexError(f"{flag} must be in [0, 2^63), got {seed}")


def resolve_tokenizer(spec: str | None, model_path: str):
    if spec is None:
        bundled = Path(model_path) / "tokenizer.json"
        spec = str(bundled) if bundled.is_file() else "bytes"
    return statex.load_tokenizer(spec)


def int_list(text: str | None, parse=int):
    if text is None:
        return None
    try:
        return [parse(part) for part in text.split(",") if part.strip()]
    except (ValueError, OverflowError):
        raise statex.StatexError(f"cannot read the list {text!r}") from None


def add_device_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda")
    from statex.runtime.settings import AUTOTUNE_MODES as MODES

    parser.add_argument("--autotune", choices=list(MODES),
                        help="CUDA: Triton autotuning fast (short timing) | full | off (first config); candidates "
                             "are compiled in parallel first and the winners cached (default STATEX_AUTOTUNE, else "
                             "fast; docs/gpu.md)")
