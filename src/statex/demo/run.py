"""``statex demo``: ``statex compare`` over the spec shipped beside the miniature bases (``spec.yaml``), with
``--quick`` and the ablation flags as overrides of that spec."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from statex.errors import StatexError

SPEC = Path(__file__).parent / "spec.yaml"
# --quick: the whole path in a few steps (about a minute); its numbers mean nothing
QUICK = {"seeds": 2, "train.batch_size": 4, "steps": 6, "eval.mqar.n": 8, "eval.mqar.pairs": [4, 16],
         "eval.ppl.windows": 8, "eval.ppl.length": 128, "data.generated.documents": 200,
         "data.generated.heldout_documents": 40}


def demo_spec_mapping(quick: bool = False, families: list[str] | None = None, seeds: int | None = None,
                      steps: int | None = None, batch: int | None = None, lr: float | None = None,
                      modes: list[str] | None = None, expand_layers: str | None = None, heads: int | None = None,
                      factor: int | None = None) -> dict[str, Any]:
    """The shipped spec's mapping with the demo's flags applied (base paths made absolute)."""
    from statex.compare.spec import apply_override, read_spec_file
    from statex.expand import GLA_MODES, MAMBA2_MODES

    raw = read_spec_file(SPEC)
    for name, fam in raw["families"].items():
        fam["base"] = str((SPEC.parent / fam["base"]).resolve())
    unknown = [f for f in families or () if f not in raw["families"]]
    if unknown:
        raise StatexError(f"unknown famil{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)} "
                          f"(choose from {', '.join(raw['families'])})")
    if families:
        raw["families"] = {k: v for k, v in raw["families"].items() if k in families}
    bad = [m for m in modes or () if m not in GLA_MODES + MAMBA2_MODES]
    if bad:
        raise StatexError(f"unknown StateX mode(s) {', '.join(bad)} (GLA: {', '.join(GLA_MODES)}; "
                          f"Mamba2: {', '.join(MAMBA2_MODES)})")
    for flag, value, low in (("--seeds", seeds, 1), ("--steps", steps, 1), ("--batch", batch, 1),
                             ("--heads", heads, 1), ("--factor", factor, 2)):
        if value is not None and value < low:
            raise StatexError(f"{flag} must be >= {low}, got {value}")
    if lr is not None and not lr > 0:
        raise StatexError(f"--lr must be > 0, got {lr}")
    settings = dict(QUICK) if quick else {}
    settings.update({k: v for k, v in (("seeds", seeds), ("steps", steps), ("train.batch_size", batch))
                     if v is not None})
    for key, value in settings.items():
        if key == "steps":
            for fam in raw["families"].values():
                fam["train"]["steps"] = value
        else:
            apply_override(raw, key.split("."), value)
    for name, fam in raw["families"].items():
        if lr is not None:
            fam["train"]["lr"] = lr
        statex_variants = [v for v in fam["variants"] if isinstance(v, dict)]
        template = dict(statex_variants[0]) if statex_variants else {}
        if modes:
            valid = GLA_MODES if name == "gla" else MAMBA2_MODES
            chosen = [m for m in modes if m in valid]
            if chosen:
                statex_variants = [{**template, "mode": m} for m in chosen]
        for variant in statex_variants:
            if expand_layers is not None:
                variant["layers"] = expand_layers
            if heads is not None and name == "gla":
                variant["heads"] = heads
            if factor is not None and name == "mamba2":
                variant["factor"] = factor
        fam["variants"] = ["lpt", *statex_variants]
    return raw


def run_demo(out: str | Path = "out/demo", quick: bool = False, families: list[str] | None = None,
             progress: bool = True, jobs: int | None = None, base_from: str | Path | None = None,
             pretrain: bool = False, resume: bool = False, command: str | None = None,
             **flags: Any) -> dict[str, Any]:
    """The demo's comparison; ``flags``: seeds, steps, batch, lr, modes, expand_layers, heads, factor. Bases: the
    shipped ones, or ``base_from`` (a directory of ``statex demo pretrain``), or with ``pretrain`` re-made in
    OUT/bases first. Returns the report's summary."""
    from statex.compare.engine import run_compare
    from statex.compare.spec import spec_from_dict
    from statex.demo.bases import find_base, pretrain_bases, shipped_base

    if base_from is not None and pretrain:
        raise StatexError("give --pretrain or --base-from, not both")
    out = Path(out)
    raw = demo_spec_mapping(quick, families, **flags)  # checks the families and flags first
    chosen = list(raw["families"])
    if base_from is not None:
        if Path(base_from).resolve() == out.resolve():
            raise StatexError("--base-from must be another directory than --out")
        bases = {f: find_base(Path(base_from), f).resolve() for f in chosen}
    elif pretrain:
        bases = {f: (out / "bases" / f).resolve() for f in chosen}
    else:
        bases = {}
        for family in chosen:
            if not (shipped_base(family) / "config.json").is_file():
                raise StatexError(f"the shipped {family} base is missing from {shipped_base(family)}: re-create it "
                                  "with `statex demo pretrain --out DIR` and pass --base-from DIR, or run with "
                                  "--pretrain")
    for family, base in bases.items():
        raw["families"][family]["base"] = str(base)
    spec = spec_from_dict(raw, root=SPEC.parent)
    if pretrain:
        from statex.compare.engine import check_run_directory
        from statex.demo.settings import default_recipes

        check_run_directory(out, spec, resume, ignore=("bases",))
        recipes = default_recipes()
        if quick:  # checks the path only
            recipes = {f: dataclasses.replace(r, steps=8, batch=8, corpus_documents=100, eval_n=8, eval_pairs=(4, 16))
                       for f, r in recipes.items()}
        missing = [f for f in chosen if not (out / "bases" / f / "config.json").is_file()]
        if missing:
            pretrain_bases(out / "bases", missing, progress=progress, jobs=jobs, recipes=recipes,
                           command="statex demo --pretrain")
        resume = True  # OUT was checked above and now holds the bases
    return run_compare(spec, out, resume=resume, jobs=jobs, progress=progress, command=command or "statex demo",
                       ignore=("bases",) if pretrain else ())
