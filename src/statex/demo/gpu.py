"""``statex demo --preset gpu --data CORPUS``: StateX against LPT at GPU scale, both families, on real text.

CORPUS is a directory made by ``statex demo corpus`` (``train/``, ``heldout/heldout.txt``,
``heldout/haystack.txt``). Stages, one after the other on one GPU, each written under OUT and skipped by
``--resume`` once finished (a stopped training run continues from its last checkpoint):

    tokenizer  a byte-level BPE of ``vocab_size`` tokens on CORPUS/train          OUT/tokenizer.json
    pretrain   per family, a fresh model at T = pre_len on text + MQAR + passkey  OUT/<family>/base/run/final
    post       per family, LPT and StateX (reinit and the family's inheriting mode) from that base at
               T = 4 x pre_len, with an identical budget (steps, batch, data order, learning rate)
                                                                                  OUT/<family>/<variant>/run/final
    eval       per model: passkey (depth x length), NIAH single_1 and single_2 (CORPUS's held-out haystack),
               MQAR (pairs x length) and held-out perplexity, at lengths pre_len ... 8 x pre_len
                                                                                  OUT/<family>/<variant>/records.json
    report     OUT/results.json, OUT/report.md (verdicts, tables, tokens/s per stage), plots (gpu_report.py)

Sizes (``PRESETS``): 25-30M parameters per family (8 GLA layers of d_model 512 with four 64 x 128 heads; 12
Mamba2 layers of d_model 512, d_state 64), chosen so that both families' pretraining, six post-training runs and
the evaluation fit one 30-minute lease of one H200 (the mid-scale 98M GLA trains at about 190K tokens/s there,
Mamba2 of that size at 72K, docs/benchmarks.md), while the models are 150x the CPU miniature's. ``budget``:
``lease`` (default; one lease, calls chained with ``--resume``), ``call`` (one 10-minute call, fewer steps and
evaluation cells) and ``tiny`` (a CPU check of the whole path in about a minute).
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from statex.demo.gpu_eval import EVAL_BATCH, PREFILL_CHUNK, evaluate_stage, release_gpu
from statex.errors import StatexError

GPU_FAMILIES = ("gla", "mamba2")
PREWARM_LIMIT_S_PER_WORKLOAD = 60.0  # the one prewarm of all stages stops after this x the workloads (the rest
# is then compiled by the stages' own prewarms)
INHERITING_MODE = {"gla": "inherit", "mamba2": "preserve"}


@dataclass
class StageBudget:
    seq_len: int
    batch: int
    steps: int
    lr: float


@dataclass
class GPUPreset:
    name: str
    vocab_size: int
    models: dict[str, dict[str, Any]]  # family -> keyword arguments of gla_config / mamba2_config
    pretrain: dict[str, StageBudget]  # family -> its base's pretraining
    post: dict[str, StageBudget]  # family -> every post-training run of that family (LPT and StateX alike)
    expand_layers: dict[str, str]  # family -> layer spec
    heads: int = 1  # GLA heads per expanded layer
    factor: int = 4  # Mamba2 d_state multiplier
    pre_pairs: tuple[int, int] = (4, 64)  # MQAR pairs in pretraining sequences
    post_pairs: tuple[int, int] = (16, 256)  # and in post-training ones
    # sampling weights beside the text's 1.0: about 48% MQAR and 5% passkey sequences. A CPU pilot
    # (experiments/pilot-recall-mix/) learned no recall at all with 9-78% MQAR in 16-24K sequences; zoology
    # trains MQAR on 10^5-10^6 sequences, so recall gets half of the preset's sequences.
    mqar_weight: float = 1.0
    mqar_keys: int | None = None  # MQAR keys / values from N ids each instead of half the vocabulary each
    # (training and evaluation alike); a 256-key range gave the only sign of recall in a CPU pilot
    # (experiments/pilot-recall-keys/), so ``lease`` uses it: with half the vocabulary (4,095 keys) the 31.6M
    # GLA of the first H200 run (``call``, 16M tokens) learned no recall at all
    passkey_weight: float = 0.1
    # How the loss is averaged: "tokens" (over labelled tokens, the trainer's default) or "sequences" (each
    # sequence equally, the CPU demo's setting). With tokens, the fully labelled text outweighs the synthetic
    # sequences, which label only their answers: at 64 x 512 with the weights above MQAR gets about 6% of the
    # loss and passkey under 0.1%. Yet the first lease's bases learned MQAR that way, and a CPU pilot
    # (experiments/pilot-recall-keys/) learned less with "sequences" (MQAR at chance vs 17x chance): kept.
    loss_average: str = "tokens"
    eval_lengths: tuple[int, ...] = (512, 1024, 2048, 4096)
    eval_depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    eval_pairs: tuple[int, ...] = (16, 32, 64, 128, 256)
    eval_n: int = 32  # examples per cell
    mqar_n: int | None = None  # MQAR sequences per cell (None: eval_n); MQAR is one forward pass per batch, no
    # decoding, so on the H200 a cell costs a fraction of a passkey or NIAH cell (stages.json's eval parts)
    heldout_length: int = 4096  # held-out perplexity: windows of this many tokens
    heldout_windows: int = 64  # ... the first this many of the held-out text (262K tokens)
    capacity_threshold: float = 0.9  # MQAR cells where the base scores below this are "past its capacity"
    loss_tolerance: float = 0.05  # StateX's held-out loss may exceed LPT's by at most this fraction
    # One seed, so a gain must be larger than noise: 8-32 sequences per cell put a cell's accuracy within a few
    # hundredths by chance (the first GPU run's "gain" of +0.0002 with every cell at 0.000-0.002 was noise).
    min_gain: float = 0.02  # the MQAR gain (mean over the cells past capacity) StateX needs to beat LPT
    recall_floor: float = 0.05  # no MQAR cell of any variant above this: the run shows nothing either way
    # family -> departures from the library's default init (demo.bases.initialise): Mamba2 takes the CPU
    # miniature's (slower decay, D = 0), without which its bases learned MQAR far more slowly there
    # (../shared/MINIATURE_NOTES.md); not measured at this size.
    init: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "mamba2": {"dt_range": [0.01, 0.1], "a_range": [0.1, 1.0], "D": 0.0}})
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _budgets(pre_steps: dict[str, int], post_steps: dict[str, int], pre=(512, 64, 1.5e-3), post=(2048, 16, 5e-4)):
    return ({f: StageBudget(pre[0], pre[1], steps, pre[2]) for f, steps in pre_steps.items()},
            {f: StageBudget(post[0], post[1], steps, post[2]) for f, steps in post_steps.items()})


def _preset(name: str) -> GPUPreset:
    models = {"gla": dict(d_model=512, n_layer=8, num_heads=4, use_short_conv=True, tie_embeddings=True),
              "mamba2": dict(d_model=512, n_layer=12, d_state=64, headdim=64)}
    expand = {"gla": "every:4", "mamba2": "every:6"}  # layers 0, 4 of 8 / 0, 6 of 12: a quarter / a sixth
    # Measured on an H200 (the first lease, docs/results.md): the whole lease ran in 17.5 min of demo time:
    # prewarm 2.7 min; GLA pretraining 3,000 steps in 5.2 min (3,000 x 64 = 192K sequences, as many as the CPU
    # miniature's base needed to learn MQAR), post-training 0.10 s per step; Mamba2 pretraining 1,500 steps in
    # 3.8 min, post-training 0.15-0.19 s per step; evaluation 7-14 s per model (MQAR under 1 s of it). So the
    # post-training stages, where StateX and LPT differ, take most of the rest of a lease: 900 / 500 steps
    # took 1.3-1.5 / 1.1-1.2 min each, the whole second lease about 22 min of demo time.
    if name == "lease":
        return GPUPreset(name, 8192, models, *_budgets({"gla": 3000, "mamba2": 1500}, {"gla": 900, "mamba2": 500},
                                                       post=(2048, 16, 1e-3)),
                         expand, eval_depths=(0.0, 0.5, 1.0), eval_pairs=(16, 32, 64, 128, 256), eval_n=8, mqar_n=64,
                         mqar_keys=256)
    if name == "call":
        return GPUPreset(name, 8192, models, *_budgets({"gla": 500, "mamba2": 300}, {"gla": 80, "mamba2": 50}),
                         expand, eval_lengths=(512, 1024, 2048, 4096), eval_depths=(0.0, 0.5, 1.0),
                         eval_pairs=(32, 128), eval_n=8)
    if name == "tiny":  # the whole path on a CPU: every stage, a few steps of very small models
        tiny = {"gla": dict(d_model=32, n_layer=2, num_heads=2, use_short_conv=True, tie_embeddings=True),
                "mamba2": dict(d_model=32, n_layer=2, d_state=8, headdim=16)}
        return GPUPreset(name, 320, tiny, *_budgets({"gla": 3, "mamba2": 3}, {"gla": 2, "mamba2": 2}, (64, 4, 3e-3),
                                                    (256, 2, 1e-3)),
                         {"gla": "1", "mamba2": "1"}, pre_pairs=(2, 8), post_pairs=(4, 16),
                         eval_lengths=(384, 768), eval_depths=(0.0, 1.0), eval_pairs=(8, 32), eval_n=2,
                         heldout_length=512, heldout_windows=4)
    raise StatexError(f"unknown --budget {name!r} (choose from lease, call, tiny)")


PRESETS = ("lease", "call", "tiny")


def preset(name: str = "lease") -> GPUPreset:
    return _preset(name)


def check_corpus(data: str | Path | None) -> dict[str, Path]:
    """The corpus layout of ``statex demo corpus``; one clear error naming what is missing."""
    if data is None:
        raise StatexError("--preset gpu needs --data CORPUS: a directory made by `statex demo corpus --out CORPUS`")
    root = Path(data)
    paths = {"train": root / "train", "heldout": root / "heldout" / "heldout.txt",
             "haystack": root / "heldout" / "haystack.txt"}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise StatexError(f"--data {root}: missing {', '.join(missing)} (make it with `statex demo corpus --out "
                          f"{root}`)")
    return paths


@dataclass
class _Stage:
    family: str
    variant: str  # base | lpt | statex-<mode>
    directory: Path

    @property
    def final(self) -> Path:
        return self.directory / "run" / "final"


def plan(out: Path, settings: GPUPreset, families: list[str]) -> list[_Stage]:
    stages = []
    for family in families:
        stages.append(_Stage(family, "base", out / family / "base"))
        for variant in ("lpt", "statex-reinit", f"statex-{INHERITING_MODE[family]}"):
            stages.append(_Stage(family, variant, out / family / variant))
    return stages


def _train_options(settings: GPUPreset, stage: _Stage, budget: StageBudget, pairs, paths, out: Path, device: str,
                   resume: bool) -> dict[str, Any]:
    options = dict(
        data=str(paths["train"]), tokenizer=str(out / "tokenizer.json"), cache_dir=str(out / "token-cache"),
        synthetic=[{"kind": "mqar", "weight": settings.mqar_weight, "num_pairs": list(pairs),
                    **({"keys": settings.mqar_keys} if settings.mqar_keys else {})},
                   {"kind": "passkey", "weight": settings.passkey_weight}],
        loss_average=settings.loss_average, seq_len=budget.seq_len, batch_size=budget.batch, steps=budget.steps,
        lr=budget.lr, min_lr=budget.lr / 10,
        warmup=max(1, budget.steps // 20), schedule="cosine", weight_decay=0.1, beta2=0.95, clip=1.0,
        seed=settings.seed, out=str(stage.directory / "run"), save_every=max(1, budget.steps // 4), keep=1,
        log_every=max(1, budget.steps // 50), heldout_sequences=16, progress=True, resume=resume,
        precision="bf16" if device == "cuda" else "fp32", device=device)
    if stage.variant == "base":
        options["model"] = str(stage.directory / "init")
    else:
        options["model"] = str(stage.directory.parent / "base" / "run" / "final")
        if stage.variant.startswith("statex-"):
            options.update(expand_layers=settings.expand_layers[stage.family], mode=stage.variant[len("statex-"):],
                           heads=settings.heads, factor=settings.factor)
    return options


def _model_config(settings: GPUPreset, family: str):
    import statex

    make = statex.gla_config if family == "gla" else statex.mamba2_config
    return make(settings.vocab_size, **settings.models[family])


def _write_init(settings: GPUPreset, stage: _Stage) -> None:
    """The base's initial weights (``settings.init``'s departures applied), written once (atomically)."""
    import statex
    from statex.demo.bases import initialise

    if not (stage.directory / "init" / "config.json").is_file():
        model = initialise(_model_config(settings, stage.family), settings.init.get(stage.family, {}), settings.seed)
        statex.save_model(model, stage.directory / "init")


def workloads(settings: GPUPreset, families: list[str]):
    """Every GPU workload of the preset's stages, as the trainer and the evaluation will ask for them: compiled
    in one prewarm at the start (one start-up of the workers for all), so that no stage waits for its own."""
    from statex import plan_expansion
    from statex.ops import prewarm

    works = []
    for family in families:
        base = _model_config(settings, family).to_dict()
        expanded = plan_expansion(_model_config(settings, family), settings.expand_layers[family], "reinit",
                                  heads=settings.heads, factor=settings.factor)[1].to_dict()  # both modes' shapes
        pre, post = settings.pretrain[family], settings.post[family]
        works.append(prewarm.Workload(base, pre.batch, pre.seq_len, train=True, forward=True, precision="bf16"))
        for model in (base, expanded):  # LPT trains the base's shapes, StateX the expanded ones
            works.append(prewarm.Workload(model, post.batch, post.seq_len, train=True, forward=True,
                                          precision="bf16"))
            works += prewarm.forward_workloads(model, EVAL_BATCH, PREFILL_CHUNK, decode=True)
    return works


def _tokens_per_s(run: Path) -> float | None:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return None
    rows = [r for r in map(json.loads, path.read_text().splitlines()) if "tokens_per_s" in r]
    steady = [r["tokens_per_s"] for r in rows if r.get("step", 0) > 5] or [r["tokens_per_s"] for r in rows[1:]]
    return round(statistics.median(steady)) if steady else None  # the first steps include compilation


def _resolve_device(name: str) -> str:
    """``cpu`` or ``cuda`` for a --device value (auto: CUDA when available), checked once for every stage."""
    import torch

    if name not in ("auto", "cpu", "cuda"):
        raise StatexError(f"--device must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise StatexError("--device cuda: no CUDA device is available")
    return "cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu"


def run_training(settings: GPUPreset, stage: _Stage, paths, out: Path, device: str, log) -> dict[str, Any]:
    """One stage's training (skipped when its final model exists; continued from a checkpoint otherwise)."""
    import statex
    from statex.train import resolve_config
    from statex.train.checkpoint import checkpoint_dirs

    if stage.final.is_dir():
        return {"skipped": True}
    if stage.variant == "base":
        _write_init(settings, stage)
    budget, pairs = (settings.pretrain[stage.family], settings.pre_pairs) if stage.variant == "base" else \
        (settings.post[stage.family], settings.post_pairs)
    resume = bool(checkpoint_dirs(stage.directory / "run"))
    log(f"{stage.family}/{stage.variant}: {'continuing' if resume else 'training'} {budget.steps} steps of "
        f"{budget.batch} x {budget.seq_len} tokens")
    started = time.time()
    summary = statex.train(resolve_config({}, _train_options(settings, stage, budget, pairs, paths, out, device,
                                                             resume)))
    release_gpu()
    if summary.get("stopped"):
        raise StatexError(f"{stage.family}/{stage.variant} stopped at step {summary['steps']} with a checkpoint; "
                          "continue with --resume")
    return {"skipped": False, "seconds": round(time.time() - started, 1),
            "tokens": budget.steps * budget.batch * budget.seq_len,
            "tokens_per_s": _tokens_per_s(stage.directory / "run")}


def run_gpu_demo(out: str | Path, data: str | Path | None, budget: str = "lease", families: list[str] | None = None,
                 resume: bool = False, progress: bool = True, device: str = "auto",
                 command: str | None = None) -> dict[str, Any]:
    """The whole GPU comparison, family by family (a report is written after each); returns the report's
    summary {"records", "verdicts", "out"}."""
    from statex.data.tokenizers import train_bpe_tokenizer
    from statex.demo.gpu_report import write_gpu_report
    from statex.files import write_atomic

    settings = preset(budget)
    paths = check_corpus(data)
    device = _resolve_device(device)
    unknown = [f for f in families or () if f not in GPU_FAMILIES]
    if unknown:
        raise StatexError(f"unknown family {', '.join(unknown)} (choose from {', '.join(GPU_FAMILIES)})")
    families = list(families or GPU_FAMILIES)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise StatexError(f"--out {out}: exists and is not a directory")
    saved = out / "settings.json"
    if saved.is_file():
        if not resume:
            raise StatexError(f"{out} holds a GPU demo run already: pass --resume to continue it, or another --out")
        if json.loads(saved.read_text()) != settings.to_dict():
            raise StatexError(f"--resume: {out} was run with other settings (see {saved}); use the same --budget")
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(saved, json.dumps(settings.to_dict(), indent=1) + "\n")
    started = time.time()

    def log(message: str) -> None:
        if progress:
            print(f"== [{(time.time() - started) / 60:5.1f} min] {message}", flush=True)

    if not (out / "tokenizer.json").is_file():
        log(f"tokenizer: byte-level BPE of {settings.vocab_size} tokens on {paths['train']}")
        train_bpe_tokenizer([paths["train"]], settings.vocab_size, out / "tokenizer.json", show_progress=progress)
    if device == "cuda":
        from statex.ops import prewarm

        log("compiling the GPU kernels of every stage")
        works = workloads(settings, families)
        prewarm.prepare(works, progress=progress, limit_s=PREWARM_LIMIT_S_PER_WORKLOAD * len(works))
    timings_path = out / "stages.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    records, summary = [], {}
    for family in families:
        stages = plan(out, settings, [family])
        for stage in stages:
            info = run_training(settings, stage, paths, out, device, log)
            if not info["skipped"]:
                timings[f"{family}/{stage.variant}/train"] = info
                write_atomic(timings_path, json.dumps(timings, indent=1) + "\n")
        for stage in stages:
            path = stage.directory / "records.json"
            if not path.is_file():
                log(f"{family}/{stage.variant}: evaluating")
                begun, parts = time.time(), {}
                rows = evaluate_stage(settings, stage, paths, out, device, parts)
                write_atomic(path, json.dumps(rows, indent=1) + "\n")
                timings[f"{family}/{stage.variant}/eval"] = {"seconds": round(time.time() - begun, 1), "parts": parts}
                log(f"{family}/{stage.variant}: evaluated in {time.time() - begun:.0f} s ("
                    + ", ".join(f"{k} {v['seconds']:.0f} s" for k, v in parts.items()) + ")")
                write_atomic(timings_path, json.dumps(timings, indent=1) + "\n")
            records += json.loads(path.read_text())
        summary = write_gpu_report(out, records, settings, timings, time.time() - started,
                                   command or f"statex demo --preset gpu --budget {budget}")
        log(f"{family}: report written to {out / 'report.md'}")
    return summary
