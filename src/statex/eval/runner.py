"""``evaluate``: run tasks on one or more models and collect records."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from statex.data.tokenizers import check_vocab
from statex.errors import StatexError
from statex.eval.common import EvalContext, Record
from statex.eval.config import TaskOptions
from statex.eval.tasks import TASKS


def model_names(paths: list[str]) -> list[str]:
    """Short unique names: the directory name, with parents added until the names differ."""
    parts = [Path(p).resolve().parts for p in paths]
    depth = 1
    while depth < max(len(p) for p in parts):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
        depth += 1
    return [str(p) for p in paths]


MQAR_TASKS = {"mqar", "mqar_layers"}  # the tasks that read MQAR's grid (pairs, lengths, keys)
# the local file each task cannot run without, and the flag that names it
_REQUIRED_FILES = {"ppl": ("ppl_file", "--ppl-file FILE (local text)"),
                   "icl": ("icl_file", "--icl-file FILE (JSONL of text and label)"),
                   "recall": ("recall_files", "--recall-files a.jsonl[,b.jsonl] (Based/JRT schema, local files)")}
_FILE_OPTIONS = {"ppl_file": "--ppl-file", "icl_file": "--icl-file", "haystack": "--haystack",
                 "recall_files": "--recall-files"}


def check_request(tasks: list[str], n: int = 20, batch_size: int = 8, prefill_chunk: int = 2048,
                  options: TaskOptions | None = None, **more: Any) -> None:
    """Every argument error of an evaluation (task names, grids, files a task needs), found without loading
    a model or reading a file's contents: ``evaluate`` calls it first, and the CLI before loading models.
    ``options`` (or its fields as keywords): the ``TaskOptions``."""
    options = TaskOptions.of(options, **more)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise StatexError(f"unknown task(s) {', '.join(unknown)} (choose from {', '.join(TASKS)})")
    for name, value in (("--n", n), ("--batch-size", batch_size), ("--prefill-chunk", prefill_chunk)):
        if value < 1:
            raise StatexError(f"{name} must be >= 1, got {value}")
    for name, low in (("lengths", 1), ("mqar_lengths", 1), ("pairs", 1), ("shots", 0), ("niah_variants", 1)):
        for value in getattr(options, name) or ():
            if value < low:
                raise StatexError(f"--{name.replace('_', '-')}: {value} must be >= {low}")
    for depth in options.depths or ():
        if not 0.0 <= depth <= 1.0:
            raise StatexError(f"--depths: {depth} is not in [0, 1]")
    variants = options.niah_variants or ()
    if any(v not in (1, 2, 3) for v in variants):
        raise StatexError(f"--niah-variants: choose from 1, 2, 3 (got {', '.join(map(str, variants))})")
    if options.mqar_keys is not None and options.mqar_keys < 1:
        raise StatexError(f"--mqar-keys must be >= 1, got {options.mqar_keys}")
    if (options.niah_keys or 1) < 1:
        raise StatexError(f"--niah-keys must be >= 1, got {options.niah_keys}")
    if "niah" in tasks and 2 in variants and not options.haystack:
        raise StatexError("niah variant 2 (essay haystack) needs --haystack FILE (any long local text)")
    if MQAR_TASKS & set(tasks):
        from statex.eval.tasks import mqar

        lengths = options.mqar_lengths or options.lengths or mqar.DEFAULT_LENGTHS
        pairs = options.pairs or mqar.DEFAULT_PAIRS
        if not any(4 * p <= length for p in pairs for length in lengths):
            raise StatexError(f"mqar: no cell fits (a sequence of length L holds at most L/4 pairs); pairs "
                              f"{', '.join(map(str, pairs))} need lengths of at least {4 * min(pairs)}")
    for task, (option, flag) in _REQUIRED_FILES.items():
        if task in tasks and not getattr(options, option):
            raise StatexError(f"task {task} needs {flag}")
    for option, flag in _FILE_OPTIONS.items():
        value = getattr(options, option)
        for path in ([value] if isinstance(value, (str, Path)) else value or []):
            if not Path(path).is_file():
                raise StatexError(f"{flag} {path}: no such file")


def check_tokenizer(tasks: list[str], tokenizer, options: TaskOptions | None = None, **more: Any) -> None:
    """The errors of an evaluation request that only the tokenizer reveals: MQAR's largest pair count (among
    those that fit a length of the grid) needs that many distinct keys."""
    options = TaskOptions.of(options, **more)
    for task in ("passkey", "niah"):
        if task in tasks:
            shortest = min(options.lengths or _default_lengths(task))
            needed = shortest_prompt(task, tokenizer, options)
            if shortest < needed:
                raise StatexError(f"--lengths {shortest}: a {task} prompt needs at least {needed} tokens with this "
                                  "tokenizer (its instructions, needle and question alone); use longer lengths")
    if not MQAR_TASKS & set(tasks):
        return
    from statex.eval.tasks import mqar

    lengths = options.mqar_lengths or options.lengths or mqar.DEFAULT_LENGTHS
    fitting = [p for p in options.pairs or mqar.DEFAULT_PAIRS if 4 * p <= max(lengths)]
    keys = mqar.spec_for(tokenizer, options.mqar_keys).num_keys
    if fitting and max(fitting) > keys:
        where = f"--mqar-keys {keys}" if options.mqar_keys else "the lower half of the vocabulary"
        raise StatexError(f"--pairs {max(fitting)}: MQAR needs {max(fitting)} distinct keys, but this tokenizer "
                          f"({tokenizer.vocab_size} tokens) gives {keys} ({where}); use fewer pairs or more keys")


def _default_lengths(task: str):
    from statex.eval.tasks import niah, passkey

    return passkey.DEFAULT_LENGTHS if task == "passkey" else niah.DEFAULT_LENGTHS


def shortest_prompt(task: str, tokenizer, options: TaskOptions) -> int:
    """The tokens a passkey or NIAH prompt takes with no haystack at all: the shortest length it can have."""
    from statex.eval.tasks import niah, passkey

    if task == "passkey":
        return len(passkey.generate_examples(tokenizer, 1, 0.0, 1, 0)[0][0])
    keys = options.niah_keys or 1
    variants = [3 if v == 3 else 1 for v in options.niah_variants or (1,)]
    return max(len(niah.generate_examples(tokenizer, 1, 0.0, 1, 0, v, keys)[0][0]) for v in variants)


def evaluation_bytes(configs, tasks: list[str], n: int, batch_size: int, prefill_chunk: int,
                     options: TaskOptions | None = None, **more: Any) -> int:
    """A lower bound of an evaluation's memory: the largest model's weights, the prompts of one setting (their
    ids, labels and sampling weights) and one prefill piece's logits and activations."""
    options = TaskOptions.of(options, **more)
    from statex.eval.tasks import mqar

    lengths = list(options.lengths or [])
    if MQAR_TASKS & set(tasks):
        lengths += list(options.mqar_lengths or mqar.DEFAULT_LENGTHS)
    longest = max(lengths or [2048])
    widest = max(configs, key=lambda c: c.parameter_count())
    piece = batch_size * min(longest, prefill_chunk)
    per_token = 4 * (2 * widest.vocab_size + 4 * widest.d_model)
    return 4 * widest.parameter_count() + 24 * n * longest + piece * per_token


def evaluate(models: dict[str, Any], tasks: list[str], tokenizer, seed: int = 0, n: int = 20, batch_size: int = 8,
             prefill_chunk: int = 2048, progress: bool = True, options: TaskOptions | None = None,
             **more: Any) -> list[Record]:
    """``models``: name -> model (anything with ``__call__``/``generate`` like ``CausalLM``). ``options`` (or
    its fields as keywords: lengths, depths, pairs, mqar_lengths, mqar_keys, niah_variants, niah_keys, haystack,
    recall_files, qa_max_tokens, ppl_file, icl_file, shots): the ``TaskOptions``."""
    options = TaskOptions.of(options, **more)
    check_request(tasks, n=n, batch_size=batch_size, prefill_chunk=prefill_chunk, options=options)
    check_tokenizer(tasks, tokenizer, options)
    records: list[Record] = []
    for name, model in models.items():
        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        if vocab is not None:
            check_vocab(tokenizer.vocab_size, vocab, name)
        model.eval()
        ctx = EvalContext(model, name, tokenizer, seed, n, batch_size, prefill_chunk, progress, options)
        with torch.no_grad():
            for task in tasks:
                records.extend(TASKS[task](ctx))
    return records
