"""The ``statex`` command line. Every subcommand uses only the public API in ``statex/__init__.py``.

User errors (bad paths, configs, checkpoints, flags) print one line on stderr and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import statex
from statex.expand import DEFAULT_MODE, GLA_MODES, MAMBA2_MODES, recall_count
from statex.cli_support import (add_device_flags, check_seed, check_vocab, device_from_flag,
                                resolve_tokenizer)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage block
        raise statex.StatexError(f"{self.prog}: {message}")


def _cmd_inspect(args: argparse.Namespace) -> int:
    config, fmt = statex.load_config(args.path)
    info = statex.describe_config(config)
    info["source_format"] = fmt
    if args.expand_layers is None:
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            print(f"{args.path} ({fmt} format)")
            print(statex.format_description(info))
        return 0
    layers = statex.select_layers(args.expand_layers, config.n_layer)
    after = statex.describe_config(statex.expand_config(config, layers, heads=args.heads, factor=args.factor))
    preview = statex.describe_expansion(info, after, layers)
    if args.json:
        print(json.dumps(preview, indent=2))
    else:
        print(f"{args.path} ({fmt} format), expanding layers {layers}")
        print(statex.format_expansion(preview))
    return 0


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")


def _recall_layers(args: argparse.Namespace, n_layer: int) -> str | None:
    """``--layers recall:K``: the K layers whose emptied state costs the model's MQAR the most, read from
    ``--recall-from`` (a ``statex eval --tasks mqar_layers`` results.json); None for any other layer spec."""
    from statex.eval.tasks.mqar_layers import choose_layers, costs_from_results, describe_choice

    count = recall_count(args.layers)
    if count is None:
        if args.recall_from is not None:
            raise statex.StatexError("--recall-from goes with --layers recall:K")
        return None
    if args.recall_from is None:
        raise statex.StatexError(f"--layers {args.layers} needs --recall-from RESULTS.json (statex eval SRC --tasks "
                                 "mqar_layers writes it)")
    costs = costs_from_results(args.recall_from, args.recall_model)
    if len(costs) != n_layer:
        raise statex.StatexError(f"--recall-from {args.recall_from}: mqar_layers of a {len(costs)}-layer model, "
                                 f"SRC has {n_layer} layers")
    layers = choose_layers(costs, count)
    print(describe_choice(costs, layers))
    return ",".join(map(str, layers))


def _cmd_expand(args: argparse.Namespace) -> int:
    import shutil

    import torch

    from statex.files import remove_path, replace_directory, temporary_directory
    from statex.models.lm import require_model_memory
    from statex.outputs import check_output

    dst = check_output(args.dst, flag="DST", inputs=[args.src], force=args.force)
    config, _ = statex.load_config(args.src)  # cheap: the request is checked before any weights are read
    chosen = _recall_layers(args, config.n_layer)
    if chosen is not None:
        args.layers = chosen
    _, planned = statex.plan_expansion(config, args.layers, args.mode, heads=args.heads, factor=args.factor,
                                       dt_init=args.dt_init)
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    require_model_memory(planned, dtype or torch.float32, copies=2)
    model = statex.load_model(args.src, dtype=dtype)
    expanded = statex.expand(model, args.layers, mode=args.mode, heads=args.heads, factor=args.factor,
                             seed=args.seed, keep_attn_norm=args.keep_attn_norm,
                             keep_ssm_params=args.keep_ssm_params, dt_init=args.dt_init)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_directory(dst)
    try:
        expanded.save_pretrained(tmp)
        for name in _TOKENIZER_FILES:  # keep the tokenizer next to the model
            if (Path(args.src) / name).is_file():
                shutil.copy2(Path(args.src) / name, tmp / name)
        replace_directory(tmp, dst)  # the new output is complete before an old one goes
    finally:
        remove_path(tmp)
    before, after = statex.describe_model(model), statex.describe_model(expanded)
    print(statex.format_expansion(statex.describe_expansion(before, after, expanded.config.history[-1]["layers"])))
    print(f"wrote {dst} (mode {args.mode}, seed {args.seed})")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from statex.io.export import export_model
    from statex.outputs import check_output

    out = check_output(args.out, flag="OUT", inputs=[args.model], force=args.force)
    export_model(args.model, out, args.to)  # refuses what the target cannot describe before reading weights
    loader = {"transformers": "transformers.Mamba2ForCausalLM", "fla": "fla.models.GLAForCausalLM"}[args.to]
    print(f"wrote {out}: {loader}.from_pretrained({str(out)!r}) loads it")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    import torch

    import math

    if not 1 <= args.max_new_tokens <= 1_000_000:
        raise statex.StatexError(f"--max-new-tokens must be in [1, 1000000], got {args.max_new_tokens}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise statex.StatexError(f"--temperature must be a finite number >= 0, got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise statex.StatexError(f"--top-k must be >= 1, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:  # NaN fails this too
        raise statex.StatexError(f"--top-p must be in (0, 1], got {args.top_p}")
    check_seed(args.seed)
    config, _ = statex.load_config(args.model)
    for stop in args.stop_id or ():
        if not 0 <= stop < config.vocab_size:
            raise statex.StatexError(f"--stop-id {stop}: not a token id of this model (0 to {config.vocab_size - 1})")
    tokenizer = resolve_tokenizer(args.tokenizer, args.model)
    check_vocab(tokenizer, config, args.model)
    try:
        ids = tokenizer.encode(args.prompt)
    except UnicodeError:
        raise statex.StatexError("--prompt is not valid UTF-8 text") from None
    if not ids:
        raise statex.StatexError("the prompt encodes to zero tokens")
    if max(ids) >= config.vocab_size:
        raise statex.StatexError(
            f"tokenizer {tokenizer.name} produced id {max(ids)} but the model's vocabulary has "
            f"{config.vocab_size} entries: wrong tokenizer for this model"
        )
    device = device_from_flag(args.device)
    model = statex.load_model(args.model, device=device)
    from statex.runtime.prewarm import prepare_for_models

    prepare_for_models([model.config], args.autotune, device, batch=1, seq_len=len(ids), decode=True)
    stops = set(args.stop_id or [])
    if not args.no_eos_stop and tokenizer.eos_token_id is not None:
        stops.add(tokenizer.eos_token_id)
    out = model.generate(torch.tensor([ids], device=device), max_new_tokens=args.max_new_tokens,
                         temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                         stop_tokens=stops)
    print(args.prompt + tokenizer.decode(out[0, len(ids):].cpu().tolist()), flush=True)
    return 0


_TRAIN_HELP = {
    "model": "checkpoint directory to post-train (statex, fla GLA, mamba_ssm or HF Mamba2)",
    "init": "config.json (or its directory) of a fresh model to pretrain",
    "data": ".jsonl / .txt files or directories, comma-separated",
    "text_field": "JSONL field holding the text (default text)",
    "tokenizer": "'bytes', 'ids:N' (N text-less ids, synthetic data only) or a tokenizer.json path (default "
                 "bytes)",
    "cache_dir": "where the pre-tokenised cache goes (default OUT/token-cache); share it between runs",
    "synthetic": "synthetic sources mixed in by weight, e.g. mqar:0.3,passkey:0.1",
    "text_weight": "weight of the text data in the mixture (default 1)",
    "text_loss_weight": "weight of the text's tokens in the loss (default 1; synthetic sources: loss_weight)",
    "state_passing": "probability that a micro-batch starts from the previous one's final state (default 0)",
    "loss_average": "tokens (mean over labelled tokens) | sequences (each sequence counts equally: use it when "
                    "mixing synthetic sequences that label only their answers)",
    "heldout_sequences": "sequences held out of training for the held-out loss (default 16)",
    "probe_sequences": "fresh sequences per synthetic source at every evaluation, for its loss and answer "
                       "accuracy in metrics.jsonl (default 32; 0: none)",
    "batch_size": "sequences per process per micro-step",
    "schedule": "cosine | constant | wsd",
    "precision": "fp32 | bf16 (autocast, fp32 master weights) | pure-bf16 (the reference code's)",
    "grad_checkpoint": "recompute each block in backward (less memory)",
    "save_every": "checkpoint every N steps (and at the end)",
    "keep": "keep the K latest checkpoints",
    "resume": "continue from the latest checkpoint in OUT",
    "eval_every": "held-out loss every N steps (default: at every save)",
    "on_nonfinite": "stop | skip a step whose loss or gradient is not finite",
    "expand_layers": "StateX: expand these layers before training (every:P, 0,6,12, frac:F, all)",
    "mode": "expansion mode (GLA reinit|inherit; Mamba2 reinit|preserve|copy|zero)",
    "heads": "GLA heads per expanded layer", "factor": "Mamba2 d_state multiplier",
    "fsdp": "shard the model with FSDP2 under torchrun",
    "stop_at_step": "stop after this step with a checkpoint (continue later with --resume)",
    "device": "auto | cpu | cuda",
    "autotune": "CUDA: Triton autotuning fast (default; short timing) | full | off (first config); candidates are "
                "compiled in parallel first and the winners cached (STATEX_AUTOTUNE, STATEX_CACHE_DIR; docs/gpu.md)",
}


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    import dataclasses

    from statex.train import TrainConfig

    parser.add_argument("--config", help="YAML or JSON file of options (flags given here override it)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kwargs = {"default": argparse.SUPPRESS, "help": _TRAIN_HELP.get(f.name)}
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        kind = {"int": int, "float": float, "int | None": int}.get(str(f.type), str)
        parser.add_argument(flag, type=kind, metavar=f.name.upper(), **kwargs)


def _cmd_train(args: argparse.Namespace) -> int:
    from statex.train import read_config_file, resolve_config

    values = {k: v for k, v in vars(args).items() if k not in ("func", "command", "config")}
    file_values = read_config_file(args.config) if args.config else {}
    config = resolve_config(file_values, values)
    summary = statex.train(config)
    if summary.get("stopped") or summary.get("rank", 0) != 0:
        return 0
    heldout = summary["heldout_loss"]
    print(f"done: {summary['steps']} steps, final loss {summary['final_loss']:.4f}"
          + (f", held-out loss {heldout:.4f}" if heldout is not None else "")
          + f"; model in {summary['final_model']}")
    return 0


def _cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from statex.data.corpus import corpus_files
    from statex.outputs import check_output

    if args.min_frequency < 1:
        raise statex.StatexError(f"--min-frequency must be >= 1, got {args.min_frequency}")
    if not str(args.out).strip():
        raise statex.StatexError("--out: the output path is empty")
    out = Path(args.out)
    if out.is_dir():
        out = out / "tokenizer.json"
    data = corpus_files(args.data)
    check_output(out, flag="--out", inputs=data, force=args.force, kind="file")
    path = statex.train_bpe_tokenizer(data, args.vocab_size, out, min_frequency=args.min_frequency)
    tokenizer = statex.load_tokenizer(path)
    print(f"wrote {path}: {tokenizer.vocab_size} tokens, end-of-document id {tokenizer.eos_token_id}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="statex", description="StateX: recurrent state expansion for GLA and Mamba2 LMs")
    parser.add_argument("--version", action="version", version=f"statex {statex.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("inspect", help="per-layer mixer shapes, recurrent state sizes and parameters")
    p.add_argument("path", help="a model directory (a directory holding only config.json is enough)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--expand-layers", metavar="SPEC",
                   help="preview a StateX expansion of these layers (every:P, 0,6,12, frac:F or all)")
    p.add_argument("--heads", type=int, default=1, help="GLA heads per expanded layer (default 1)")
    p.add_argument("--factor", type=int, default=4, help="Mamba2 d_state multiplier (default 4)")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser(
        "expand", help="StateX: enlarge the recurrent state of selected layers",
        description="Write a StateX copy of SRC to DST. GLA modes: reinit (paper default: fresh mixer), inherit "
                    "(keep projections, merge heads). Mamba2 modes: reinit (paper default: fresh B and C), "
                    "preserve (ours: exact original function at start, new dims still learn), and the reference "
                    "ablations copy (tiled B/C: the copies get identical gradients and never diverge) and zero "
                    "(new dims get exactly zero gradient and never learn). reinit/copy/zero reset A_log, dt_bias "
                    "and the gated-norm weight as the reference code does, unless --keep-ssm-params.")
    p.add_argument("src", help="model directory (statex, fla GLA, mamba_ssm or HF Mamba2)")
    p.add_argument("dst", help="output directory (project format)")
    p.add_argument("--layers", required=True, metavar="SPEC",
                   help="every:P (layers 0, P, 2P, ...), a list 0,6,12, frac:F (evenly spaced), all, or recall:K "
                        "(the K layers that hold the model's recall, from --recall-from)")
    p.add_argument("--recall-from", metavar="RESULTS", help="with --layers recall:K: a results.json of `statex eval "
                                                            "SRC --tasks mqar_layers`")
    p.add_argument("--recall-model", metavar="NAME", help="the model's name in --recall-from when it holds several")
    p.add_argument("--mode", default=DEFAULT_MODE, help=f"GLA: {'|'.join(GLA_MODES)}; Mamba2: "
                                                        f"{'|'.join(MAMBA2_MODES)} (default {DEFAULT_MODE})")
    p.add_argument("--heads", type=int, default=1, help="GLA heads per expanded layer (default 1)")
    p.add_argument("--factor", type=int, default=4, help="Mamba2 d_state multiplier (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-attn-norm", action="store_true", help="GLA: keep attn_norm instead of resetting it")
    p.add_argument("--keep-ssm-params", action="store_true",
                   help="Mamba2: keep A_log, dt_bias and the gated-norm weight (preserve always keeps them)")
    p.add_argument("--dt-init", choices=["reset", "inverse-softplus"], default="reset",
                   help="Mamba2: reset dt_bias to 1 (reference) or draw it with the inverse-softplus init")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="dtype of the written weights (auto: as stored in SRC)")
    p.add_argument("--force", action="store_true", help="replace DST if it exists")
    p.set_defaults(func=_cmd_expand)

    p = sub.add_parser("export", help="write a model in transformers' (Mamba2) or fla's (GLA) format",
                       description="Export a model whose layers are all alike to the format of transformers' "
                                   "Mamba2ForCausalLM or fla's GLAForCausalLM (docs/interop.md). A StateX model "
                                   "with expanded layers cannot be described there and is refused.")
    p.add_argument("model", help="model directory (any format statex loads)")
    p.add_argument("out", help="output directory")
    p.add_argument("--to", required=True, choices=["transformers", "fla"])
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("generate", help="generate text from a model")
    p.add_argument("model", help="model directory (statex, fla GLA, mamba_ssm or HF Mamba2)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--tokenizer", help="'bytes' or a tokenizer.json path (default: MODEL/tokenizer.json, "
                                       "else bytes)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop-id", type=int, action="append", help="token id that ends generation (repeatable)")
    p.add_argument("--no-eos-stop", action="store_true", help="do not stop at the tokenizer's end token")
    add_device_flags(p)
    p.set_defaults(func=_cmd_generate)

    from statex.eval.cli import add_eval_parser

    add_eval_parser(sub)

    p = sub.add_parser("train", help="pretrain or post-train (LPT / StateX) a model",
                       description="Train with AdamW (decay on >= 2-dim parameters). A StateX run and an LPT run "
                                   "differ only in --expand-layers. Multi-process: torchrun --nproc_per_node N "
                                   "-m statex train ...")
    _add_train_flags(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("tokenizer", help="tokenizer utilities")
    tok_sub = p.add_subparsers(dest="tokenizer_command", required=True, parser_class=_Parser)
    t = tok_sub.add_parser("train", help="train a byte-level BPE tokenizer.json on local text")
    t.add_argument("data", help=".jsonl / .txt files or directories, comma-separated")
    t.add_argument("--vocab-size", type=int, required=True)
    t.add_argument("--out", required=True, help="output tokenizer.json path (or directory)")
    t.add_argument("--min-frequency", type=int, default=2)
    t.add_argument("--force", action="store_true", help="replace an existing tokenizer file")
    t.set_defaults(func=_cmd_tokenizer_train)

    from statex.compare.cli import add_compare_parser
    from statex.demo.cli import add_demo_parser

    add_compare_parser(sub)
    add_demo_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        from statex.runtime import settings

        try:
            settings.check_environment()
        except ValueError as exc:
            raise statex.StatexError(str(exc)) from None
        return args.func(args)
    except statex.TrainingInterrupted as exc:
        print(f"statex: {exc}", file=sys.stderr)
        return exc.exit_code
    except statex.StatexError as exc:
        print(f"statex: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except MemoryError:
        print("statex: error: out of memory (the request is larger than this machine can hold)", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a read-only or vanished target, found while writing
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"statex: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("statex: interrupted", file=sys.stderr)
        return 130
    except torch.OutOfMemoryError as exc:  # the GPU's memory, not the request
        where = "".join(f" {note}" for note in getattr(exc, "__notes__", []))
        print(f"statex: error: out of GPU memory{where}: {_one_line(exc).split('. ')[0]}; use a smaller batch or "
              "fewer --jobs side by side, then continue a stopped run with --resume", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
