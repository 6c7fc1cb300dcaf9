"""The ``statex eval`` command line: the flags, and the run (cheap checks first, models loaded last)."""
from __future__ import annotations

import argparse
from pathlib import Path

import statex
from statex.data.tokenizers import is_builtin
from statex.cli_support import (add_device_flags, check_seed, check_vocab, device_from_flag, int_list,
                                prepare_kernels, resolve_tokenizer)


def run_eval_command(args: argparse.Namespace) -> int:
    from statex.eval import check_request, check_tokenizer, evaluate, markdown_table, model_names, write_report
    from statex.eval.common import parse_length
    from statex.eval.runner import evaluation_bytes
    from statex.files import remove_path, replace_directory, temporary_directory
    from statex.outputs import check_output
    from statex.resources import require_memory

    if not args.tasks and not args.lm_eval:
        raise statex.StatexError("nothing to do: give --tasks and/or --lm-eval")
    tasks = [t for t in (args.tasks or "").split(",") if t]
    options = dict(
        lengths=int_list(args.lengths, parse_length), depths=int_list(args.depths, float),
        pairs=int_list(args.pairs), mqar_lengths=int_list(args.mqar_lengths, parse_length), mqar_keys=args.mqar_keys,
        niah_variants=int_list(args.niah_variants), niah_keys=args.niah_keys, haystack=args.haystack,
        recall_files=[f for f in (args.recall_files or "").split(",") if f] or None,
        qa_max_tokens=args.qa_max_tokens, ppl_file=args.ppl_file, icl_file=args.icl_file,
        shots=int_list(args.shots))
    check_request(tasks, n=args.n, batch_size=args.batch_size, prefill_chunk=args.prefill_chunk, **options)
    check_seed(args.seed)
    inputs = [*args.models, None if is_builtin(args.tokenizer) else args.tokenizer, options["ppl_file"],
              options["icl_file"], options["haystack"], *(options["recall_files"] or [])]
    out = check_output(args.out, flag="--out", inputs=inputs, force=args.force)
    if args.lm_eval and args.lm_eval_include is not None and not Path(args.lm_eval_include).is_dir():
        raise statex.StatexError(f"--lm-eval-include {args.lm_eval_include}: no such directory")
    device = device_from_flag(args.device)
    tokenizer = resolve_tokenizer(args.tokenizer, args.models[0])
    check_tokenizer(tasks, tokenizer, **options)
    names = model_names(args.models)
    configs = [statex.load_config(path)[0] for path in args.models]
    for name, config in zip(names, configs):
        check_vocab(tokenizer, config, name)
    require_memory(evaluation_bytes(configs, tasks, args.n, args.batch_size, args.prefill_chunk, **options),
                   "this evaluation", device, hint="use shorter --lengths / --mqar-lengths, a smaller --n or "
                   "--batch-size, or a smaller --prefill-chunk")
    models = {name: statex.load_model(path, device=device) for name, path in zip(names, args.models)}
    longest = max(options["lengths"] or options["mqar_lengths"] or [2048])
    prepare_kernels(args.autotune, device, configs, batch=args.batch_size, seq_len=min(longest, args.prefill_chunk),
                     decode=any(t in ("passkey", "niah", "recall", "icl") for t in tasks) or bool(args.lm_eval))
    records, samples = [], {}
    if tasks:
        records = evaluate(models, tasks, tokenizer, seed=args.seed, n=args.n, batch_size=args.batch_size,
                           prefill_chunk=args.prefill_chunk, **options)
    if args.lm_eval:
        try:
            from statex.eval.lm_eval_adapter import run_lm_eval
        except ImportError as exc:
            raise statex.StatexError(str(exc)) from None
        for name, model in models.items():
            found = samples.setdefault(name, {}) if args.lm_eval_log_samples else None
            records += run_lm_eval(model, name, tokenizer, args.lm_eval.split(","), limit=args.lm_eval_limit,
                                   include_path=args.lm_eval_include, batch_size=args.batch_size, samples=found)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_directory(out)  # the whole report is written before it replaces an older one
    try:
        written = write_report(records, tmp, plots=not args.no_plots)
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
    p = sub.add_parser("eval", help="evaluate models: passkey, niah, mqar, recall, ppl, icl, lm-eval tasks",
                       description="Writes OUT/results.json, OUT/report.md (models side by side) and PNG plots.")
    p.add_argument("models", nargs="+", metavar="MODEL", help="model directories")
    p.add_argument("--tasks", help="comma-separated: passkey,niah,mqar,recall,ppl,icl")
    p.add_argument("--tokenizer", help="'bytes' or a tokenizer.json (default: MODEL/tokenizer.json, else bytes)")
    p.add_argument("--lengths", help="context lengths in tokens, e.g. 512,1k,4k (passkey, niah, mqar, ppl)")
    p.add_argument("--depths", help="needle depths in [0, 1], e.g. 0,0.25,0.5,0.75,1")
    p.add_argument("--pairs", help="MQAR key-value pairs, e.g. 8,16,32,64")
    p.add_argument("--mqar-lengths", help="MQAR sequence lengths (default: --lengths, else 256,512)")
    p.add_argument("--mqar-keys", type=int, help="MQAR keys from ids [1, 1+N), values from the next N (as the "
                                                  "training's synthetic mqar `keys: N`; default: half the "
                                                  "vocabulary each)")
    p.add_argument("--niah-variants", help="RULER single-needle variants: 1 (repeated noise), 2 (essay: needs "
                                           "--haystack), 3 (UUID values); default 1")
    p.add_argument("--niah-keys", type=int, help="needles with distinct keys (multi-key NIAH); default 1")
    p.add_argument("--haystack", help="a local text file for NIAH variant 2")
    p.add_argument("--recall-files", help="Based/JRT JSONL files, comma-separated (task recall)")
    p.add_argument("--qa-max-tokens", type=int, help="truncate recall contexts around the answer to N tokens")
    p.add_argument("--ppl-file", help="local text file for the ppl task")
    p.add_argument("--icl-file", help="JSONL of text and label for the icl task")
    p.add_argument("--shots", help="ICL demonstrations, e.g. 0,4,16")
    p.add_argument("--n", type=int, default=20, help="examples per setting (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--prefill-chunk", type=int, default=2048, help="tokens per prefill piece (flat memory)")
    p.add_argument("--lm-eval", help="lm-evaluation-harness tasks, e.g. piqa,hellaswag (needs statex[eval])")
    p.add_argument("--lm-eval-limit", type=int, help="examples per lm-eval task")
    p.add_argument("--lm-eval-include", help="directory of extra lm-eval task YAMLs")
    p.add_argument("--lm-eval-log-samples", action="store_true",
                   help="also write lm-eval's per-item records to OUT/samples/<model>_<task>.jsonl")
    p.add_argument("--out", default="out/eval")
    p.add_argument("--force", action="store_true", help="replace --out if it exists (atomically, once the new "
                                                        "report is complete)")
    p.add_argument("--no-plots", action="store_true")
    add_device_flags(p)
    p.set_defaults(func=run_eval_command)
