"""``statex demo``: StateX against LPT end to end, in miniature, on a CPU.

For each family (GLA, Mamba2): pretrain a small model with a small recurrent state at a short context on data
the demo generates (MQAR key-value sequences, passkey needles in filler, generic filler text); then from that
base run LPT (post-training at a 4x longer context) and StateX (expansion of some layers, then the identical
post-training: same data, steps, learning rate and seed) in the paper's mode (``reinit``) and in an inheriting
mode (GLA ``inherit``, Mamba2 ``preserve``); evaluate base, LPT and StateX on MQAR (pairs x length), passkey
(depth x length) and held-out loss; write ``results.json``, ``report.md`` and plots, and say for each mode
whether the miniature reproduces the paper's claim (better recall than LPT at an equal post-training budget,
held-out loss about equal).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from statex.errors import StatexError

# ---- settings ----------------------------------------------------------------------------------------------------


@dataclass
class FamilySettings:
    family: str
    model: dict[str, Any]  # keyword arguments of gla_config / mamba2_config (vocab filled in)
    expand_layers: list[int]
    modes: tuple[str, ...]
    heads: int = 1
    factor: int = 4
    embedding_std: float | None = None  # override of the embedding init (tiny models learn faster with 1.0)
    base_lr: float = 3e-3
    post_lr: float = 2e-3


@dataclass
class DemoSettings:
    families: list[FamilySettings]
    base_seq_len: int = 64
    post_seq_len: int = 256
    base_steps: int = 1200
    post_steps: int = 300
    base_batch: int = 64
    post_batch: int = 16
    base_pairs: tuple[int, int] = (2, 8)
    post_pairs: tuple[int, int] = (8, 32)
    # data mixtures: mostly MQAR in pretraining (recall has to be learned first), more text and needles after
    base_mix: dict[str, float] = field(default_factory=lambda: {"text": 0.05, "mqar": 0.9, "passkey": 0.05})
    post_mix: dict[str, float] = field(default_factory=lambda: {"text": 0.1, "mqar": 0.8, "passkey": 0.1})
    corpus_documents: int = 2000
    eval_n: int = 24
    mqar_lengths: tuple[int, ...] = (64, 128, 256)
    mqar_pairs: tuple[int, ...] = (4, 8, 16, 32)
    passkey_lengths: tuple[int, ...] = (256, 512)
    passkey_depths: tuple[float, ...] = (0.0, 0.5, 1.0)
    heldout_length: int = 256


def default_settings(quick: bool = False) -> DemoSettings:
    """The tuned miniature (docs/results.md): about 12 minutes with the two families side by side on 2 cores."""
    families = [
        FamilySettings("gla", dict(d_model=64, n_layer=4, num_heads=4, expand_k=0.5, expand_v=1.0,
                                   intermediate_size=128, use_short_conv=True),
                       expand_layers=[1, 3], modes=("reinit", "inherit"), heads=1, embedding_std=1.0,
                       base_lr=3e-3, post_lr=3e-3),
        FamilySettings("mamba2", dict(d_model=64, n_layer=3, d_state=8, headdim=16, expand=2, ngroups=1),
                       expand_layers=[1], modes=("reinit", "preserve"), factor=4, base_lr=4e-3, post_lr=3e-3),
    ]
    settings = DemoSettings(families)
    if quick:
        settings = dataclasses.replace(
            settings, base_steps=60, post_steps=20, base_batch=8, post_batch=4, corpus_documents=200, eval_n=4,
            mqar_lengths=(64, 128), mqar_pairs=(4, 8), passkey_lengths=(256,), passkey_depths=(0.0, 1.0),
            heldout_length=128)
    return settings


# ---- generated data ----------------------------------------------------------------------------------------------

_SUBJECTS = ["the farmer", "a small bird", "my neighbour", "the old captain", "a quiet student", "the baker",
             "our teacher", "the tall woman", "a young fox", "the gardener"]
_VERBS = ["carried", "found", "painted", "lost", "watched", "built", "cleaned", "opened", "sold", "counted"]
_OBJECTS = ["a basket of apples", "the blue door", "an old map", "three green bottles", "the wooden boat",
            "a letter", "the garden fence", "two silver coins", "a heavy box", "the red kite"]
_PLACES = ["near the river", "at the market", "in the morning", "behind the house", "on the hill",
           "before dinner", "in the village", "under the bridge", "after the rain", "by the window"]


def filler_documents(count: int, seed: int) -> list[str]:
    """Generic English-like text: sentences from templates over small word lists."""
    rng = random.Random(seed)
    documents = []
    for _ in range(count):
        sentences = []
        for _ in range(rng.randint(3, 12)):
            sentence = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_PLACES)}."
            sentences.append(sentence[0].upper() + sentence[1:])
        documents.append(" ".join(sentences))
    return documents


def write_data(out: Path, settings: DemoSettings, seed: int) -> tuple[Path, Path]:
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    corpus = data / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n"
                              for d in filler_documents(settings.corpus_documents, seed)))
    heldout = data / "heldout.txt"  # a different seed: text never trained on
    heldout.write_text("\n".join(filler_documents(max(50, settings.eval_n * 8), seed + 10_007)))
    return corpus, heldout


# ---- the pipeline ------------------------------------------------------------------------------------------------


def _train(statex, out: Path, model: Path, corpus: Path, seq_len: int, batch: int, steps: int, lr: float,
           pairs: tuple[int, int], mix: dict[str, float], settings: DemoSettings, seed: int, progress: bool,
           **expansion):
    from statex.train import resolve_config

    config = resolve_config({}, dict(
        model=str(model), data=str(corpus), tokenizer="bytes", cache_dir=str(out.parent.parent / "token-cache"),
        synthetic=[{"kind": "mqar", "weight": mix["mqar"], "num_pairs": list(pairs)},
                   {"kind": "passkey", "weight": mix["passkey"]}], text_weight=mix["text"], seq_len=seq_len, batch_size=batch,
        steps=steps, lr=lr, min_lr=lr / 10, warmup=max(1, steps // 20), schedule="cosine", weight_decay=0.1,
        beta2=0.98, clip=1.0, seed=seed, loss_average="sequences", out=str(out), save_every=steps, keep=1, log_every=max(1, steps // 20),
        heldout_sequences=8, progress=progress, **expansion))
    return statex.train(config)


BUDGET_KNOBS = ("base_steps", "post_steps", "base_batch", "post_batch")


def apply_overrides(settings: DemoSettings, modes: list[str] | None = None, expand_layers: list[int] | str | None = None,
                    heads: int | None = None, factor: int | None = None, **budget: int | None) -> DemoSettings:
    """The knobs of ``statex demo``: StateX modes, expanded layers, GLA heads, Mamba2 factor (ablations), and
    the training budget (``BUDGET_KNOBS``: steps and batch sizes of pretraining and post-training)."""
    unknown = set(budget) - set(BUDGET_KNOBS)
    if unknown:
        raise ValueError(f"unknown demo setting(s): {', '.join(sorted(unknown))}")
    for name, value in budget.items():
        if value is not None:
            if value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
            settings = dataclasses.replace(settings, **{name: value})
    from statex.expand import GLA_MODES, MAMBA2_MODES, select_layers

    unknown = [m for m in modes or () if m not in GLA_MODES + MAMBA2_MODES]
    if unknown:
        raise ValueError(f"unknown StateX mode(s) {', '.join(unknown)} (GLA: {', '.join(GLA_MODES)}; "
                         f"Mamba2: {', '.join(MAMBA2_MODES)})")
    families = []
    for fam in settings.families:
        fam = dataclasses.replace(fam)
        if modes:
            valid = GLA_MODES if fam.family == "gla" else MAMBA2_MODES
            fam.modes = tuple(m for m in modes if m in valid) or fam.modes
        if expand_layers is not None:
            fam.expand_layers = select_layers(expand_layers, fam.model["n_layer"])
        if heads is not None:
            fam.heads = heads
        if factor is not None:
            fam.factor = factor
        families.append(fam)
    return dataclasses.replace(settings, families=families)


def run_demo(out: str | Path = "out/demo", seed: int = 0, quick: bool = False, families: list[str] | None = None,
             progress: bool = True, settings: DemoSettings | None = None, jobs: int | None = None,
             base_from: str | Path | None = None, command: str | None = None) -> dict[str, Any]:
    """The whole demo; returns {"records", "verdicts", "out"}. ``jobs``: families run side by side in that many
    processes (default: one per family when the machine has that many cores), each with an equal share of
    the cores; with one job they run in this process, one after the other. ``base_from``: the OUT of an earlier
    demo run whose pretrained bases to reuse (for ablations: only post-training and evaluation run)."""
    settings = settings or default_settings(quick)
    out = Path(out)
    known = [f.family for f in settings.families]
    unknown = [f for f in families or () if f not in known]
    if unknown:
        raise StatexError(f"unknown famil{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)} "
                          f"(choose from {', '.join(known)})")
    if out.exists() and not out.is_dir():
        raise StatexError(f"--out {out}: exists and is not a directory")
    chosen = [f for f in settings.families if not families or f.family in families]
    if base_from is not None:
        base_from = Path(base_from).resolve()
        for fam in chosen:
            if not (base_from / fam.family / "base" / "final" / "config.json").is_file():
                raise StatexError(f"--base-from {base_from}: no pretrained {fam.family} base in "
                                  f"{base_from / fam.family / 'base' / 'final'}")
        if base_from == out.resolve():
            raise StatexError("--base-from must be another demo's output directory, not --out itself")
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    corpus, heldout = write_data(out, settings, seed)
    cores = os.cpu_count() or 1
    jobs = max(1, min(len(chosen), jobs if jobs is not None else cores))
    records: list[dict[str, Any]] = []
    if jobs == 1:
        for fam in chosen:
            records += run_family(fam, settings, out, corpus, heldout, seed, progress, started, base_from)
    else:
        records = _run_parallel(chosen, settings, out, corpus, heldout, seed, jobs, max(1, cores // jobs), progress,
                                started, base_from)
    elapsed = time.time() - started
    command = command or f"statex demo --seed {seed}{' --quick' if quick else ''}"
    summary = write_demo_report(out, records, settings, seed, quick, elapsed, command,
                                str(base_from) if base_from else None)
    _stage(f"done in {elapsed / 60:.1f} min: {out / 'report.md'}", started)
    return summary


def run_family(fam: FamilySettings, settings: DemoSettings, out: Path, corpus: Path, heldout: Path, seed: int,
               progress: bool, started: float, base_from: Path | None = None) -> list[dict[str, Any]]:
    """Pretrain one family's base (or take it from ``base_from``), post-train it with LPT and each StateX mode,
    evaluate all; its records."""
    import statex
    from statex.eval import evaluate

    tokenizer = statex.load_tokenizer("bytes")
    root = out / fam.family
    if root.exists():  # the demo owns OUT/<family>: a new run replaces the previous one
        shutil.rmtree(root)
    root.mkdir(parents=True)
    status = _Status(root, fam.family, started)
    if base_from is not None:
        base = base_from / fam.family / "base" / "final"
        status.stage(f"reusing the pretrained base {base}")
    else:
        base = _pretrain(statex, fam, settings, root, corpus, seed, progress, status, tokenizer.vocab_size)
    variants = {"base": base}
    post = [("lpt", {})] + [(f"statex-{mode}", dict(expand_layers=list(fam.expand_layers), mode=mode,
                                                     heads=fam.heads, factor=fam.factor)) for mode in fam.modes]
    for variant, expansion in post:
        status.stage(f"post-training {variant} at T={settings.post_seq_len}", root / variant, settings.post_steps)
        _train(statex, root / variant, base, corpus, settings.post_seq_len,
               settings.post_batch, settings.post_steps, fam.post_lr, settings.post_pairs, settings.post_mix,
               settings, seed, progress, **expansion)
        variants[variant] = root / variant / "final"
    status.stage(f"evaluating {', '.join(variants)}")
    models = {f"{fam.family}-{v}": statex.load_model(p) for v, p in variants.items()}
    records = []
    for variant, path in variants.items():
        info = statex.describe_model(models[f"{fam.family}-{variant}"])
        records.append(_record(fam.family, variant, "state", "total", "elements", info["total_state_elements"], 1))
        records.append(_record(fam.family, variant, "params", "total", "count", info["total_params"], 1))
    results = evaluate(models, ["mqar", "passkey"], tokenizer, seed=seed + 1, n=settings.eval_n, batch_size=8,
                       progress=progress, mqar_lengths=list(settings.mqar_lengths),
                       pairs=list(settings.mqar_pairs), lengths=list(settings.passkey_lengths),
                       depths=list(settings.passkey_depths))
    results += evaluate(models, ["ppl"], tokenizer, seed=seed + 1, n=settings.eval_n, batch_size=8,
                        progress=progress, ppl_file=str(heldout), lengths=[settings.heldout_length])
    for r in results:
        variant = r.model.split("-", 1)[1]
        task = r.task
        if task == "ppl":
            if r.metric != "loss" or not r.setting.endswith(" all"):
                continue
            task, setting = "heldout_loss", f"length={settings.heldout_length}"
        else:
            setting = r.setting
        records.append(_record(fam.family, variant, task, setting, r.metric, r.value, r.n, r.params))
    status.stage("done")
    return records


def _pretrain(statex, fam, settings, root, corpus, seed, progress, status, vocab_size) -> Path:
    status.stage("building the base model")
    builder = statex.gla_config if fam.family == "gla" else statex.mamba2_config
    model = statex.build_model(builder(vocab_size, **fam.model), seed=seed)
    if fam.embedding_std is not None:
        with torch.no_grad():
            torch.nn.init.normal_(model.embed_tokens.weight, std=fam.embedding_std,
                                  generator=torch.Generator().manual_seed(seed))
    model.save_pretrained(root / "init")
    print(statex.format_description(statex.describe_model(model)), flush=True)
    status.stage(f"pretraining at T={settings.base_seq_len}", root / "base", settings.base_steps)
    _train(statex, root / "base", root / "init", corpus, settings.base_seq_len, settings.base_batch,
           settings.base_steps, fam.base_lr, settings.base_pairs, settings.base_mix, settings, seed, progress)
    return root / "base" / "final"


class _Status:
    """A family's current stage, printed and kept in OUT/<family>/status.json for the parent process."""

    def __init__(self, root: Path, family: str, started: float):
        self.path, self.family, self.started = root / "status.json", family, started

    def stage(self, message: str, run_dir: Path | None = None, steps: int | None = None) -> None:
        _stage(f"[{self.family}] {message}", self.started)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"stage": message, "run": str(run_dir) if run_dir else None, "steps": steps}))
        tmp.replace(self.path)


def _family_worker(fam, settings, out, corpus, heldout, seed, threads, started, base_from):
    torch.set_num_threads(threads)
    log = out / f"{fam.family}.log"
    with open(log, "w") as handle, contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
        return run_family(fam, settings, out, corpus, heldout, seed, False, started, base_from)


def _run_parallel(chosen, settings, out, corpus, heldout, seed, jobs, threads, progress, started, base_from):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    names = ", ".join(f.family for f in chosen)
    _stage(f"running {names} side by side ({jobs} processes x {threads} thread(s)); full logs in "
           f"{out}/<family>.log", started)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {f.family: pool.submit(_family_worker, f, settings, out, corpus, heldout, seed, threads, started,
                                         base_from) for f in chosen}
        last = ""
        while not all(fu.done() for fu in futures.values()):
            time.sleep(2)
            line = " | ".join(_progress_of(out / name) for name in futures)
            if progress and line != last:
                print(f"  {(time.time() - started) / 60:4.1f} min  {line}", flush=True)
                last = line
            for name, fu in futures.items():
                if fu.done() and fu.exception() is not None:
                    for other in futures.values():
                        other.cancel()
                    raise fu.exception()
        return [r for name in futures for r in futures[name].result()]


def _progress_of(root: Path) -> str:
    """'gla: pretraining at T=64 step 450/1500 loss 2.31' from a family's status file and its metrics."""
    try:
        status = json.loads((root / "status.json").read_text())
    except (OSError, ValueError):
        return f"{root.name}: starting"
    text = f"{root.name}: {status['stage']}"
    if status.get("run"):
        try:
            lines = (Path(status["run"]) / "metrics.jsonl").read_text().splitlines()
            last = next(json.loads(x) for x in reversed(lines) if '"loss"' in x)
            text += f" step {last['step']}/{status['steps']} loss {last['loss']:.3f}"
        except (OSError, StopIteration, ValueError):
            pass
    return text


def _record(family, variant, task, setting, metric, value, n, params=None) -> dict[str, Any]:
    return {"family": family, "variant": variant, "model": f"{family}-{variant}", "task": task, "setting": setting,
            "metric": metric, "value": float(value), "n": int(n), "params": dict(params or {})}


def _stage(message: str, started: float) -> None:
    print(f"\n== {message} ({(time.time() - started) / 60:.1f} min elapsed)", flush=True)


# ---- report ------------------------------------------------------------------------------------------------------

RECALL_MARGIN = 0.02  # smaller recall differences are within the noise of the demo's evaluation


def _mean(records, family, variant, task) -> float | None:
    values = [r["value"] for r in records if r["family"] == family and r["variant"] == variant and r["task"] == task]
    return sum(values) / len(values) if values else None


def verdicts(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each family and StateX mode: recall (mean of the MQAR and passkey grid means) vs LPT, and held-out
    loss vs LPT. Reproduced = recall at least RECALL_MARGIN above LPT's with held-out loss within 5% of LPT's."""
    out = []
    for family in dict.fromkeys(r["family"] for r in records):
        lpt = {t: _mean(records, family, "lpt", t) for t in ("mqar", "passkey", "heldout_loss")}
        modes = [v for v in dict.fromkeys(r["variant"] for r in records if r["family"] == family)
                 if v.startswith("statex-")]
        for variant in modes:
            sx = {t: _mean(records, family, variant, t) for t in ("mqar", "passkey", "heldout_loss")}
            recall_sx, recall_lpt = (sx["mqar"] + sx["passkey"]) / 2, (lpt["mqar"] + lpt["passkey"]) / 2
            loss_ratio = sx["heldout_loss"] / lpt["heldout_loss"]
            out.append({"family": family, "variant": variant, "recall": recall_sx, "recall_lpt": recall_lpt,
                        "mqar": sx["mqar"], "mqar_lpt": lpt["mqar"], "passkey": sx["passkey"],
                        "passkey_lpt": lpt["passkey"], "heldout_loss": sx["heldout_loss"],
                        "heldout_loss_lpt": lpt["heldout_loss"],
                        "reproduced": bool(recall_sx >= recall_lpt + RECALL_MARGIN and loss_ratio < 1.05)})
    return out


def write_demo_report(out: Path, records: list[dict[str, Any]], settings: DemoSettings, seed: int, quick: bool,
                      elapsed: float, command: str, base_from: str | None = None) -> dict[str, Any]:
    from statex.eval.common import Record
    from statex.eval.report import make_plots

    (out / "results.json").write_text(json.dumps(records, indent=1) + "\n")
    eval_records = [Record(r["model"], r["task"], r["setting"], r["metric"], r["value"], r["n"], r["params"])
                    for r in records if r["task"] in ("mqar", "passkey")]
    plots = make_plots(eval_records, out)
    found = verdicts(records)
    lines = [f"# StateX vs LPT in miniature (seed {seed}{', --quick' if quick else ''})", "",
             f"Command: `{command}`; {elapsed / 60:.1f} minutes"
             + (f" (pretrained bases reused from {base_from})." if base_from else "."), "",
             "## Verdicts", "",
             "Claim (paper): StateX recalls better than LPT at an equal post-training budget, with held-out loss "
             "about equal. Recall = mean of the MQAR grid mean and the passkey grid mean; reproduced = recall at "
             f"least {RECALL_MARGIN} above LPT's and held-out loss within 5% of LPT's.", "",
             "| family | StateX mode | recall (StateX / LPT) | MQAR | passkey | held-out loss | reproduced |",
             "|---|---|---|---|---|---|---|"]
    for v in found:
        lines.append(f"| {v['family']} | {v['variant']} | {v['recall']:.3f} / {v['recall_lpt']:.3f} | "
                     f"{v['mqar']:.3f} / {v['mqar_lpt']:.3f} | {v['passkey']:.3f} / {v['passkey_lpt']:.3f} | "
                     f"{v['heldout_loss']:.4f} / {v['heldout_loss_lpt']:.4f} | "
                     f"{'yes' if v['reproduced'] else 'no'} |")
    if quick:
        lines += ["", "(--quick runs too few steps for these numbers to mean anything; it checks the pipeline.)"]
    lines += ["", "## All results", "", _table(records), "", "## Settings", "", "```json",
              json.dumps(dataclasses.asdict(settings), indent=1), "```", ""]
    lines += [f"![{name}]({path.name})" for name, path in plots.items()]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:8 + len(found) + 2]))
    return {"records": records, "verdicts": found, "out": str(out)}


def _table(records: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(r["model"] for r in records))
    rows: dict[tuple, dict[str, float]] = {}
    for r in records:
        rows.setdefault((r["family"], r["task"], r["setting"], r["metric"]), {})[r["model"]] = r["value"]
    header = "| family | task | setting | metric | " + " | ".join(columns) + " |"
    lines = [header, "|---|---|---|---|" + "---|" * len(columns)]
    for (family, task, setting, metric), values in rows.items():
        cells = [("{:.4g}".format(values[c]) if c in values else "") for c in columns]
        lines.append(f"| {family} | {task} | {setting} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
