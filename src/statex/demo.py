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

import dataclasses
import json
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

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
    base_steps: int = 1000
    post_steps: int = 250
    base_batch: int = 32
    post_batch: int = 8
    base_pairs: tuple[int, int] = (2, 8)
    post_pairs: tuple[int, int] = (4, 32)
    mix: dict[str, float] = field(default_factory=lambda: {"text": 0.1, "mqar": 0.8, "passkey": 0.1})
    corpus_documents: int = 2000
    eval_n: int = 24
    mqar_lengths: tuple[int, ...] = (64, 128, 256)
    mqar_pairs: tuple[int, ...] = (4, 8, 16, 32)
    passkey_lengths: tuple[int, ...] = (256, 512)
    passkey_depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    heldout_length: int = 256


def default_settings(quick: bool = False) -> DemoSettings:
    families = [
        FamilySettings("gla", dict(d_model=64, n_layer=4, num_heads=4, expand_k=0.5, expand_v=1.0, hidden_ratio=4,
                                   use_short_conv=True),
                       expand_layers=[1, 3], modes=("reinit", "inherit"), heads=1, embedding_std=1.0),
        FamilySettings("mamba2", dict(d_model=64, n_layer=4, d_state=8, headdim=16, expand=2, ngroups=1),
                       expand_layers=[1, 3], modes=("reinit", "preserve"), factor=4),
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


def _mixture(settings: DemoSettings, pairs: tuple[int, int]) -> list[dict[str, Any]]:
    return [{"kind": "mqar", "weight": settings.mix["mqar"], "num_pairs": list(pairs)},
            {"kind": "passkey", "weight": settings.mix["passkey"]}]


def _train(statex, out: Path, model: Path, corpus: Path, seq_len: int, batch: int, steps: int, lr: float,
           pairs: tuple[int, int], settings: DemoSettings, seed: int, progress: bool, **expansion):
    from statex.train import resolve_config

    config = resolve_config({}, dict(
        model=str(model), data=str(corpus), tokenizer="bytes", cache_dir=str(out.parent.parent / "token-cache"),
        synthetic=_mixture(settings, pairs), text_weight=settings.mix["text"], seq_len=seq_len, batch_size=batch,
        steps=steps, lr=lr, min_lr=lr / 10, warmup=max(1, steps // 20), schedule="cosine", weight_decay=0.1,
        beta2=0.98, clip=1.0, seed=seed, loss_average="sequences", out=str(out), save_every=steps, keep=1, log_every=max(1, steps // 20),
        heldout_sequences=8, progress=progress, **expansion))
    return statex.train(config)


def apply_overrides(settings: DemoSettings, modes: list[str] | None = None, expand_layers: list[int] | str | None = None,
                    heads: int | None = None, factor: int | None = None) -> DemoSettings:
    """The ablation knobs of ``statex demo``: StateX modes, expanded layers, GLA heads, Mamba2 factor."""
    from statex.expand import GLA_MODES, MAMBA2_MODES, select_layers

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
             progress: bool = True, settings: DemoSettings | None = None) -> dict[str, Any]:
    import statex
    from statex.eval import evaluate

    settings = settings or default_settings(quick)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    tokenizer = statex.load_tokenizer("bytes")
    corpus, heldout = write_data(out, settings, seed)
    records: list[dict[str, Any]] = []
    for fam in settings.families:
        if families and fam.family not in families:
            continue
        root = out / fam.family
        if root.exists():  # the demo owns OUT/<family>: a new run replaces the previous one
            shutil.rmtree(root)
        _stage(f"[{fam.family}] building the base model", started)
        builder = statex.gla_config if fam.family == "gla" else statex.mamba2_config
        model = statex.build_model(builder(tokenizer.vocab_size, **fam.model), seed=seed)
        if fam.embedding_std is not None:
            with torch.no_grad():
                torch.nn.init.normal_(model.embed_tokens.weight, std=fam.embedding_std,
                                      generator=torch.Generator().manual_seed(seed))
        model.save_pretrained(root / "init")
        print(statex.format_description(statex.describe_model(model)))
        _stage(f"[{fam.family}] pretraining at T={settings.base_seq_len}", started)
        _train(statex, root / "base", root / "init", corpus, settings.base_seq_len, settings.base_batch,
               settings.base_steps, fam.base_lr, settings.base_pairs, settings, seed, progress)
        variants = {"base": root / "base" / "final"}
        post = [("lpt", {})] + [(f"statex-{mode}", dict(expand_layers=list(fam.expand_layers), mode=mode,
                                                         heads=fam.heads, factor=fam.factor)) for mode in fam.modes]
        for variant, expansion in post:
            _stage(f"[{fam.family}] post-training {variant} at T={settings.post_seq_len}", started)
            _train(statex, root / variant, root / "base" / "final", corpus, settings.post_seq_len,
                   settings.post_batch, settings.post_steps, fam.post_lr, settings.post_pairs, settings, seed,
                   progress, **expansion)
            variants[variant] = root / variant / "final"
        _stage(f"[{fam.family}] evaluating {', '.join(variants)}", started)
        models = {f"{fam.family}-{v}": statex.load_model(p) for v, p in variants.items()}
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
    elapsed = time.time() - started
    summary = write_demo_report(out, records, settings, seed, quick, elapsed)
    _stage(f"done in {elapsed / 60:.1f} min: {out / 'report.md'}", started)
    return summary


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
                      elapsed: float) -> dict[str, Any]:
    from statex.eval.common import Record
    from statex.eval.report import make_plots

    (out / "results.json").write_text(json.dumps(records, indent=1) + "\n")
    eval_records = [Record(r["model"], r["task"], r["setting"], r["metric"], r["value"], r["n"], r["params"])
                    for r in records if r["task"] in ("mqar", "passkey")]
    plots = make_plots(eval_records, out)
    found = verdicts(records)
    lines = [f"# StateX vs LPT in miniature (seed {seed}{', --quick' if quick else ''})", "",
             f"Command: `statex demo --seed {seed}{' --quick' if quick else ''}`; {elapsed / 60:.1f} minutes.", "",
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
