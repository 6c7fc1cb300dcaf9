"""The evaluation's configuration: ``TaskOptions`` (the grids and files the tasks read; None: the task's own
default) and ``EvalConfig`` (a ``statex eval`` run: the tasks, sizes, lm-eval and output), typed like ``TrainConfig``:
defaults < a YAML/JSON file (``--config``) < flags, the flags generated from the fields, validated before any work."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from statex.errors import StatexError
from statex.validation import check_field_types, merge_option_layers

CONFIG_FILE_LIMIT = 2**20


@dataclass
class TaskOptions:
    lengths: list | None = None  # context lengths in tokens (passkey, niah, mqar, ppl)
    depths: list | None = None  # needle depths in [0, 1]
    pairs: list | None = None  # MQAR key-value pairs
    mqar_lengths: list | None = None  # MQAR sequence lengths (default: lengths, else MQAR's own)
    mqar_keys: int | None = None  # MQAR keys from ids [1, 1+N), values from the next N
    niah_variants: list | None = None  # RULER single-needle variants 1, 2 (essay haystack), 3 (UUID values)
    niah_keys: int | None = None  # needles with distinct keys
    haystack: str | None = None  # a local text file for NIAH variant 2
    recall_files: list | None = None  # Based / JRT JSONL files
    qa_max_tokens: int | None = None  # recall contexts cut to this many tokens around the answer
    ppl_file: str | None = None  # local text for the ppl task
    icl_file: str | None = None  # JSONL of text and label for the icl task
    shots: list | None = None  # ICL demonstrations

    @classmethod
    def of(cls, options: "TaskOptions | dict[str, Any] | None" = None, **more: Any) -> "TaskOptions":
        """Typed options from keyword arguments (``evaluate(..., pairs=[4, 16])``); unknown names refused."""
        if isinstance(options, TaskOptions) and not more:
            return options
        values = {**(dataclasses.asdict(options) if isinstance(options, TaskOptions) else options or {}), **more}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise StatexError(f"unknown evaluation option(s) {', '.join(unknown)} (known: {', '.join(sorted(names))})")
        found = cls(**{k: v for k, v in values.items() if k in names})
        check_field_types(found, "", label=lambda name: "--" + name.replace("_", "-"), error=StatexError)
        return found


@dataclass
class EvalConfig(TaskOptions):
    tasks: list | None = None  # passkey, niah, mqar, mqar_layers, recall, ppl, icl
    tokenizer: str | None = None  # bytes, ids:N or a tokenizer.json (default: MODEL/tokenizer.json, else bytes)
    n: int = 20  # examples per setting
    seed: int = 0
    batch_size: int = 8
    prefill_chunk: int = 2048  # tokens per prefill piece (flat memory)
    lm_eval: list | None = None  # lm-evaluation-harness tasks
    lm_eval_limit: int | None = None  # examples per lm-eval task
    lm_eval_include: str | None = None  # a directory of extra lm-eval task YAMLs
    lm_eval_log_samples: bool = False  # lm-eval's per-item records to OUT/samples/
    out: str = "out/eval"
    force: bool = False  # replace --out (atomically, once the new report is complete)
    no_plots: bool = False
    device: str = "auto"  # auto | cpu | cuda
    autotune: str | None = None  # CUDA: fast | full | off

    def validate(self) -> "EvalConfig":
        from statex.eval.runner import check_request
        from statex.runtime.settings import AUTOTUNE_MODES as MODES

        check_field_types(self, "", label=lambda name: "--" + name.replace("_", "-"), error=StatexError)
        if not self.tasks and not self.lm_eval:
            raise StatexError("nothing to do: give --tasks and/or --lm-eval")
        if self.autotune is not None and self.autotune not in MODES:
            raise StatexError(f"--autotune must be one of {', '.join(MODES)}, got {self.autotune!r}")
        if not 0 <= self.seed < 2**63:
            raise StatexError(f"--seed must be in [0, 2^63), got {self.seed}")
        check_request(self.tasks or [], n=self.n, batch_size=self.batch_size, prefill_chunk=self.prefill_chunk,
                      options=self.task_options())
        return self

    def task_options(self) -> TaskOptions:
        return TaskOptions(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TaskOptions)})


# list fields and how one item of a comma-separated flag is read
LIST_ITEMS = {"lengths": "length", "mqar_lengths": "length", "depths": float, "pairs": int, "niah_variants": int,
              "shots": int, "recall_files": str, "tasks": str, "lm_eval": str}


def parse_list(name: str, value: Any) -> list | None:
    """A list field from a flag's "a,b,c" (lengths may be written 4k) or a config file's list."""
    from statex.eval.common import parse_length

    if value is None or isinstance(value, list):
        return value
    kind = LIST_ITEMS[name]
    read = parse_length if kind == "length" else kind
    try:
        return [read(part.strip()) for part in str(value).split(",") if part.strip()]
    except (ValueError, OverflowError):
        raise StatexError(f"--{name.replace('_', '-')}: cannot read the list {value!r}") from None


def resolve_eval_config(file_values: dict[str, Any] | None = None,
                        overrides: dict[str, Any] | None = None) -> EvalConfig:
    """Defaults, then the config file's values, then explicitly given flags; validated."""
    merged = merge_option_layers(EvalConfig, file_values, overrides, "evaluation", error=StatexError)
    merged = {k: parse_list(k, v) if k in LIST_ITEMS else v for k, v in merged.items()}
    return EvalConfig(**merged).validate()


def read_eval_config_file(path) -> dict[str, Any]:
    from statex.train.config import read_mapping_file

    data = read_mapping_file(path, CONFIG_FILE_LIMIT, "config file")
    return {str(k).replace("-", "_"): v for k, v in data.items()}
