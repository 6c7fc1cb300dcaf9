"""``statex demo``: from each family's pretrained base, LPT and StateX (each mode) post-trained with an identical
budget over several seeds, every model evaluated on the same MQAR grid and held-out text, then the report.

Each (family, variant, seed) is one piece: post-train, evaluate, write its records to
``OUT/<family>/<variant>/seed<S>/records.json``. Pieces run side by side (``parallel.run_tasks``); with
``resume`` a piece whose records exist is not run again.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

from statex.demo.bases import find_base, pretrain_base, read_record, shipped_base
from statex.demo.data import write_corpus, write_heldout
from statex.demo.parallel import run_tasks
from statex.demo.settings import FAMILIES, DemoSettings, default_recipes, default_settings
from statex.demo.training import train_run
from statex.errors import StatexError

CORPUS_SEED = 1  # the post-training corpus (the bases were pretrained on seed 0's)


@dataclasses.dataclass
class _Piece:
    family: str
    variant: str  # "base", "lpt" or "statex-<mode>"
    seed: int | None  # post-training seed (None for the base)
    base: Path
    directory: Path
    expansion: dict[str, Any]


def run_demo(out: str | Path = "out/demo", settings: DemoSettings | None = None, quick: bool = False,
             families: list[str] | None = None, progress: bool = True, jobs: int | None = None,
             base_from: str | Path | None = None, pretrain: bool = False, resume: bool = False,
             command: str | None = None) -> dict[str, Any]:
    """The whole comparison; returns {"records", "verdicts", "out"}. Bases: the shipped ones, or ``base_from``
    (a directory of ``statex demo pretrain``), or with ``pretrain`` re-made in OUT/bases first."""
    from statex.demo.report import write_demo_report

    settings = settings or default_settings(quick)
    out = Path(out)
    unknown = [f for f in families or () if f not in FAMILIES]
    if unknown:
        raise StatexError(f"unknown famil{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)} "
                          f"(choose from {', '.join(FAMILIES)})")
    if out.exists() and not out.is_dir():
        raise StatexError(f"--out {out}: exists and is not a directory")
    if base_from is not None and pretrain:
        raise StatexError("give --pretrain or --base-from, not both")
    chosen = [f for f in settings.families if not families or f.family in families]
    bases = {} if pretrain else {f.family: _locate_base(f.family, base_from) for f in chosen}
    if base_from is not None and Path(base_from).resolve() == out.resolve():
        raise StatexError("--base-from must be another directory than --out")
    _check_resume(out, settings, resume)
    out.mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(json.dumps(settings.to_dict(), indent=1) + "\n")
    started = time.time()
    if pretrain:
        bases = _pretrain(out, [f.family for f in chosen], quick, progress, jobs, started)
    corpus = write_corpus(out / "data", 2000 if not quick else 200, CORPUS_SEED)
    heldout = write_heldout(out / "data", settings.heldout_documents, CORPUS_SEED)
    pieces = _plan(out, settings, chosen, bases)
    todo = {_name(p): p for p in pieces if not (resume and (p.directory / "records.json").is_file())}
    for piece in todo.values():
        if piece.directory.exists():
            shutil.rmtree(piece.directory)
    fams = {f.family: f for f in chosen}
    tasks = {name: (_run_piece, (p, fams[p.family], settings, corpus, heldout, out / "token-cache"))
             for name, p in todo.items()}
    watch = {name: p.directory / "run" for name, p in todo.items()}
    run_tasks(tasks, jobs=jobs, progress=progress, log_dir=out / "logs", watch=watch, started=started)
    records = [r for p in pieces for r in json.loads((p.directory / "records.json").read_text())]
    base_records = {f: read_record(b) for f, b in bases.items() if (Path(b) / "recipe.json").is_file()}
    elapsed = time.time() - started
    summary = write_demo_report(out, records, settings, elapsed, command or "statex demo", base_records,
                                {f: str(b) for f, b in bases.items()}, quick)
    if progress:
        print(f"== done in {elapsed / 60:.1f} min: {out / 'report.md'}", flush=True)
    return summary


def _locate_base(family: str, base_from: str | Path | None) -> Path:
    if base_from is not None:
        return find_base(Path(base_from), family)
    base = shipped_base(family)
    if not (base / "config.json").is_file():
        raise StatexError(f"the shipped {family} base is missing from {base}: re-create it with "
                          "`statex demo pretrain --out DIR` and pass --base-from DIR, or run with --pretrain")
    return base


def _check_resume(out: Path, settings: DemoSettings, resume: bool) -> None:
    """A resumed run must have the settings of the run it continues, except the number of seeds: a piece of
    seed s depends on nothing else, so ``--seeds 5 --resume`` adds seeds 3 and 4 to a 3-seed run."""
    saved = out / "settings.json"
    if not (resume and saved.is_file()):
        return
    before, now = json.loads(saved.read_text()), settings.to_dict()
    before.pop("seeds", None)
    now.pop("seeds", None)
    if before != now:
        raise StatexError(f"--resume: {out} was run with other settings (see {saved}); resume with the same "
                          "flags (--seeds may differ) or choose another --out")


def _pretrain(out: Path, families: list[str], quick: bool, progress: bool, jobs, started) -> dict[str, Path]:
    recipes = default_recipes()
    if quick:  # checks the path only
        recipes = {f: dataclasses.replace(r, steps=8, batch=8, corpus_documents=100, eval_n=8,
                                          eval_pairs=(4, 16)) for f, r in recipes.items()}
    tasks = {f"pretrain {f}": (pretrain_base, (recipes[f], out / "bases" / f, out / "bases" / ".work" / f, False,
                                               "statex demo --pretrain"))
             for f in families}
    watch = {f"pretrain {f}": out / "bases" / ".work" / f / "run" for f in families}
    run_tasks(tasks, jobs=jobs, progress=progress, log_dir=out / "logs", watch=watch, started=started)
    shutil.rmtree(out / "bases" / ".work", ignore_errors=True)
    return {f: out / "bases" / f for f in families}


def _plan(out: Path, settings: DemoSettings, chosen, bases: dict[str, Path]) -> list[_Piece]:
    """Every piece, the slower family's first and seeds interleaved, so that side-by-side workers stay busy."""
    pieces = []
    for fam in sorted(chosen, key=lambda f: f.family != "mamba2"):
        root = out / fam.family
        pieces.append(_Piece(fam.family, "base", None, bases[fam.family], root / "base", {}))
        for seed in range(settings.seeds):
            pieces.append(_Piece(fam.family, "lpt", seed, bases[fam.family], root / "lpt" / f"seed{seed}", {}))
            for mode in fam.modes:
                expansion = dict(expand_layers=list(fam.expand_layers), mode=mode, heads=fam.heads,
                                 factor=fam.factor)
                pieces.append(_Piece(fam.family, f"statex-{mode}", seed, bases[fam.family],
                                     root / f"statex-{mode}" / f"seed{seed}", expansion))
    return pieces


def _name(piece: _Piece) -> str:
    return f"{piece.family}/{piece.variant}" + ("" if piece.seed is None else f"/seed{piece.seed}")


def _run_piece(piece: _Piece, fam, settings: DemoSettings, corpus: Path, heldout: Path, cache: Path) -> str:
    """Post-train (unless the piece is the base itself), evaluate, write records.json; returns its path."""
    import statex

    piece.directory.mkdir(parents=True, exist_ok=True)
    model_dir = piece.base
    if piece.variant != "base":
        train_run(piece.base, piece.directory / "run", corpus, cache, settings.seq_len, settings.batch,
                  fam.steps, fam.lr, tuple(fam.pairs), fam.mix, piece.seed, progress=False,
                  **piece.expansion)
        model_dir = piece.directory / "run" / "final"
    model = statex.load_model(model_dir)
    records = evaluate_piece(model, piece, settings, heldout, sorted({fam.base_seq_len, settings.seq_len}))
    (piece.directory / "records.json").write_text(json.dumps(records, indent=1) + "\n")
    return str(piece.directory / "records.json")


def evaluate_piece(model, piece: _Piece, settings: DemoSettings, heldout: Path,
                   lengths: list[int]) -> list[dict[str, Any]]:
    """State and parameter counts, MQAR accuracy over ``lengths`` x pairs, and held-out loss, as demo records."""
    import statex
    from statex.eval import evaluate

    tokenizer = statex.load_tokenizer("bytes")
    info = statex.describe_model(model)
    out = [_record(piece, "state", "total", "elements", info["total_state_elements"], 1),
           _record(piece, "params", "total", "count", info["total_params"], 1)]
    name = _name(piece)
    for r in evaluate({name: model}, ["mqar"], tokenizer, seed=settings.eval_seed, n=settings.eval_n,
                      batch_size=64, progress=False, mqar_lengths=lengths,
                      pairs=list(settings.mqar_pairs)):
        out.append(_record(piece, "mqar", r.setting, r.metric, r.value, r.n, r.params))
    for r in evaluate({name: model}, ["ppl"], tokenizer, seed=settings.eval_seed, n=settings.eval_n, batch_size=16,
                      progress=False, ppl_file=str(heldout), lengths=[settings.heldout_length]):
        if r.metric == "loss" and r.setting.endswith(" all"):
            out.append(_record(piece, "heldout_loss", f"length={settings.heldout_length}", "loss", r.value, r.n))
    return out


def _record(piece: _Piece, task, setting, metric, value, n, params=None) -> dict[str, Any]:
    return {"family": piece.family, "variant": piece.variant, "seed": piece.seed,
            "model": f"{piece.family}-{piece.variant}", "task": task, "setting": setting, "metric": metric,
            "value": float(value), "n": int(n), "params": dict(params or {})}
