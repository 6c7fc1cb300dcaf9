"""``statex compare SPEC``: the StateX-vs-LPT protocol from a spec file, its fields overridden by flags."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from statex.errors import StatexError


def corpus_overrides(data: str) -> list[tuple[list[str], Any]]:
    """``--data``: a directory made by ``statex demo corpus`` (train/, heldout/heldout.txt, heldout/haystack.txt)
    sets data.text, data.heldout and data.haystack; any other path sets data.text."""
    root = Path(data)
    if not root.exists():
        raise StatexError(f"--data {data}: no such file or directory")
    layout = {"text": root / "train", "heldout": root / "heldout" / "heldout.txt",
              "haystack": root / "heldout" / "haystack.txt"}
    if all(p.exists() for p in layout.values()):
        return [(["data", key], str(path.resolve())) for key, path in layout.items()]
    return [(["data", "text"], str(root.resolve()))]


def spec_overrides(args: argparse.Namespace, raw: dict[str, Any]) -> list[tuple[list[str], Any]]:
    """The flags as (field path, value) overrides of the spec file's mapping ``raw``, in the order applied:
    ``--set`` last, so that it wins."""
    from statex.compare.spec import parse_override

    overrides: list[tuple[list[str], Any]] = []
    if args.data:
        overrides += corpus_overrides(args.data)
        if isinstance(raw.get("data"), dict) and raw["data"].get("generated") is not None:
            overrides.append((["data", "generated"], None))
    if args.seeds is not None:
        overrides.append((["seeds"], args.seeds))
    if args.device is not None:
        overrides.append((["device"], args.device))
    if args.steps is not None:
        overrides.append((["train", "steps"], args.steps))
        for name, fam in (raw.get("families") or {}).items():
            if isinstance(fam, dict) and isinstance(fam.get("train"), dict) and "steps" in fam["train"]:
                overrides.append((["families", name, "train", "steps"], args.steps))
    overrides += [parse_override(text) for text in args.set or []]
    return overrides


def select_families(raw: dict[str, Any], families: str | None) -> None:
    if not families:
        return
    chosen = [f for f in families.split(",") if f]
    known = list((raw.get("families") or {}).keys())
    unknown = [f for f in chosen if f not in known]
    if unknown:
        raise StatexError(f"--families: {', '.join(unknown)} not in the spec (it has {', '.join(known)})")
    raw["families"] = {name: raw["families"][name] for name in known if name in chosen}


def run_compare_command(args: argparse.Namespace) -> int:
    from statex.compare.engine import run_compare
    from statex.compare.plan import describe_plan, make_plan
    from statex.compare.spec import apply_override, read_spec_file, spec_from_dict
    from statex.outputs import check_output

    raw = read_spec_file(args.spec)
    select_families(raw, args.families)
    for keys, value in spec_overrides(args, raw):
        apply_override(raw, keys, value)
    spec = spec_from_dict(raw, root=Path(args.spec).resolve().parent)
    if args.out is not None and not args.out.strip():
        raise StatexError("--out: the output path is empty")
    out = Path(args.out) if args.out is not None else Path("out") / "compare" / Path(args.spec).stem
    if args.plan:
        print("\n".join(describe_plan(make_plan(spec, out))))
        return 0
    inputs = [args.spec, spec.data.text and spec.data.text.split(",")[0], spec.data.heldout,
              *(fam.base.path for fam in spec.families.values())]
    out = check_output(out, flag="--out", inputs=inputs, resumable=True)
    command = "statex " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["compare"] else None
    summary = run_compare(spec, out, resume=args.resume, jobs=args.jobs, progress=not args.no_progress,
                          command=command)
    print_summary(summary, out)
    return 0


def print_summary(summary: dict[str, Any], out: Path) -> None:
    """One line per verdict, then where the report is."""
    for v in summary["verdicts"]:
        print(f"{v['family']} {v['variant']}: gain {v['gain']:+.3f} over {v['cells_past_capacity']} cells past the "
              f"base's capacity, {v['seeds_better']} of {v['seeds']} seeds better: {v['verdict']}")
    print(f"wrote {out}/report.md and {out}/results.json")


def add_compare_parser(sub) -> None:
    p = sub.add_parser("compare", help="StateX vs LPT on any base: post-train, evaluate, report (from a spec file)",
                       description="Runs the comparison a spec file describes (docs/compare.md): per family, the "
                                   "base (a checkpoint, or pretrained here), LPT and StateX variants post-trained "
                                   "with an identical budget over several seeds, one evaluation grid, a verdict "
                                   "rule with 95% intervals over seeds. Writes OUT/results.json, OUT/report.md and "
                                   "plots; every stage has its own directory, and --resume continues a stopped run.")
    p.add_argument("spec", help="a YAML or JSON spec file")
    p.add_argument("--out", help="output directory (default out/compare/<spec name>)")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a spec field, e.g. --set train.steps=100 --set families.gla.base=path/to/ckpt "
                        "(VALUE is read as YAML; repeatable)")
    p.add_argument("--data", metavar="CORPUS", help="training text: a `statex demo corpus` directory (sets data.text, "
                                                    "data.heldout, data.haystack) or corpus files")
    p.add_argument("--seeds", type=int, help="post-training seeds 0..N-1 (may change on --resume: adds seeds)")
    p.add_argument("--steps", type=int, help="post-training steps of every family")
    p.add_argument("--families", help="run only these families of the spec (comma-separated)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: the spec's (auto: CUDA when "
                                                                      "available)")
    p.add_argument("--jobs", type=int, help="pieces side by side in this many processes: on a CPU of one thread "
                                            "each (default one per core; 1 runs them here); on a GPU sharing it "
                                            "(default 1: in turn; more for models too small to fill it)")
    p.add_argument("--resume", action="store_true",
                   help="continue a run in --out (the same spec, but seeds, eval and verdict may change: a changed "
                        "eval evaluates every model again, training kept)")
    p.add_argument("--plan", action="store_true", help="print the stages, state and parameter counts and tokens, "
                                                       "and exit (configs only: no weights or data are read)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_compare_command)
