"""The ``statex eval`` command line: flags generated from ``EvalConfig`` (defaults < ``--config`` file < flags),
then the run (cheap checks first, models loaded last)."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import statex
from statex.data.tokenizers import is_builtin
from statex.cli_support import check_vocab, device_from_flag, resolve_tokenizer
from statex.runtime.prewarm import prepare_for_models

_HELP = {
    "tasks": "comma-separated: passkey,niah,mqar,mqar_layers,recall,ppl,icl",
    "tokenizer": "'bytes', 'ids:N' or a tokenizer.json (default: MODEL/tokenizer.json, else bytes)",
    "lengths": "context lengths in tokens, e.g. 512,1k,4k (passkey, niah, mqar, ppl)",
    "depths": "needle depths in [0, 1], e.g. 0,0.25,0.5,0.75,1",
    "pairs": "MQAR key-value pairs, e.g. 8,16,32,64",
    "mqar_lengths": "MQAR sequence lengths (default: --lengths, else 256,512)",
    "mqar_keys": "MQAR keys from ids [1, 1+N), values from the next N (as the training's synthetic mqar `keys: N`; "
                 "default: half the vocabulary each)",
    "niah_variants": "RULER single-needle variants: 1 (repeated noise), 2 (essay: needs --haystack), 3 (UUID "
                     "values); default 1",
    "niah_keys": "needles with distinct keys (multi-key NIAH); default 1",
    "haystack": "a local text file for NIAH variant 2",
    "recall_files": "Based/JRT JSONL files, comma-separated (task recall)",
    "qa_max_tokens": "truncate recall contexts around the answer to N tokens",
    "ppl_file": "local text file for the ppl task",
    "icl_file": "JSONL of text and label for the icl task",
    "shots": "ICL demonstrations, e.g. 0,4,16",
    "n": "examples per setting (default 20)",
    "prefill_chunk": "tokens per prefill piece (flat memory; default 2048)",
    "lm_eval": "lm-evaluation-harness tasks, e.g. piqa,hellaswag (needs statex[eval])",
    "lm_eval_limit": "examples per lm-eval task",
    "lm_eval_include": "directory of extra lm-eval task YAMLs",
    "lm_eval_log_samples": "also write lm-eval's per-item records to OUT/samples/<model>_<task>.jsonl",
    "out": "report directory (default out/eval)",
    "force": "replace --out if it exists (atomically, once the new report is complete)",
    "device": "auto (CUDA when available) | cpu | cuda",
    "autotune": "CUDA: Triton autotuning fast (short timing) | full | off (first config); candidates are compiled "
                "in parallel first and the winners cached (default STATEX_AUTOTUNE, else fast; docs/gpu.md)",
}


def config_from_args(args: argparse.Namespace):
    from statex.eval.config import EvalConfig, read_eval_config_file, resolve_eval_config

    names = {f.name for f in dataclasses.fields(EvalConfig)}
    flags = {name: getattr(args, name) for name in names if hasattr(args, name)}
    file_values = read_eval_config_file(args.config) if args.config else {}
    return resolve_eval_config(file_values, flags)


def run_eval_command(args: argparse.Namespace) -> int:
    from statex.eval import evaluate, markdown_table, model_names, write_report
    from statex.eval.runner import check_tokenizer, evaluation_bytes
    from statex.files import remove_path, replace_directory, temporary_directory
    from statex.outputs import check_output
    from statex.resources import require_memory

    config = config_from_args(args)
    tasks, options = config.tasks or [], config.task_options()
    inputs = [*args.models, None if is_builtin(config.tokenizer or "bytes") else config.tokenizer, options.ppl_file,
              options.icl_file, options.haystack, *(options.recall_files or [])]
    out = check_output(config.out, flag="--out", inputs=inputs, force=config.force)
    if config.lm_eval and config.lm_eval_include is not None and not Path(config.lm_eval_include).is_dir():
        raise statex.StatexError(f"--lm-eval-include {config.lm_eval_include}: no such directory")
    device = device_from_flag(config.device)
    tokenizer = resolve_tokenizer(config.tokenizer, args.models[0])
    check_tokenizer(tasks, tokenizer, options)
    names = model_names(args.models)
    configs = [statex.load_config(path)[0] for path in args.models]
    for name, model_config in zip(names, configs):
        check_vocab(tokenizer, model_config, name)
    require_memory(evaluation_bytes(configs, tasks, config.n, config.batch_size, config.prefill_chunk, options),
                   "this evaluation", device, hint="use shorter --lengths / --mqar-lengths, a smaller --n or "
                   "--batch-size, or a smaller --prefill-chunk")
    models = {name: statex.load_model(path, device=device) for name, path in zip(names, args.models)}
    longest = max(options.lengths or options.mqar_lengths or [2048])
    prepare_for_models(configs, config.autotune, device, batch=config.batch_size,
                       seq_len=min(longest, config.prefill_chunk),
                       decode=any(t in ("passkey", "niah", "recall", "icl") for t in tasks) or bool(config.lm_eval))
    records, samples = [], {}
    if tasks:
        records = evaluate(models, tasks, tokenizer, seed=config.seed, n=config.n, batch_size=config.batch_size,
                           prefill_chunk=config.prefill_chunk, options=options)
    if config.lm_eval:
        try:
            from statex.eval.lm_eval_adapter import run_lm_eval
        except ImportError as exc:
            raise statex.StatexError(str(exc)) from None
        for name, model in models.items():
            found = samples.setdefault(name, {}) if config.lm_eval_log_samples else None
            records += run_lm_eval(model, name, tokenizer, config.lm_eval, limit=config.lm_eval_limit,
                                   include_path=config.lm_eval_include, batch_size=config.batch_size, samples=found)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_directory(out)  # the whole report is written before it replaces an older one
    try:
        written = write_report(records, tmp, plots=not config.no_plots)
        if samples:
            from statex.eval.lm_eval_adapter import write_samples

            for name, found in samples.items():
                write_samples(found, tmp / "samples", name)
        replace_directory(tmp, out)
    finally:
        remove_path(tmp)
    print(markdown_table(records))
    print("wrote " + ", ".join(str(out / p.name) for p in written.values()))
    return 0


def add_eval_parser(sub) -> None:
    from statex.eval.config import EvalConfig, LIST_ITEMS
    from statex.runtime.settings import AUTOTUNE_MODES as MODES

    p = sub.add_parser("eval",
                       help="evaluate models: passkey, niah, mqar, mqar_layers, recall, ppl, icl, lm-eval tasks",
                       description="Writes OUT/results.json, OUT/report.md (models side by side) and PNG plots. "
                                   "Every option may also come from --config FILE (YAML or JSON); flags win.")
    p.add_argument("models", nargs="+", metavar="MODEL", help="model directories")
    p.add_argument("--config", help="YAML or JSON file of options (flags given here override it)")
    for f in dataclasses.fields(EvalConfig):
        flag = "--" + f.name.replace("_", "-")
        kwargs = {"default": argparse.SUPPRESS, "help": _HELP.get(f.name)}
        if f.type in ("bool", bool):
            p.add_argument(flag, action="store_true", **kwargs)
        elif f.name in LIST_ITEMS:
            p.add_argument(flag, metavar="A,B,...", **kwargs)  # read by eval.config.parse_list
        elif f.name == "autotune":
            p.add_argument(flag, choices=list(MODES), **kwargs)
        else:
            kind = {"int": int, "int | None": int}.get(str(f.type), str)
            p.add_argument(flag, type=kind, metavar=f.name.upper(), **kwargs)
    p.set_defaults(func=run_eval_command)
