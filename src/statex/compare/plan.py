"""The comparison as stages: every base's pretraining (when the spec pretrains it), every (family, variant, seed)'s
post-training and every model's evaluation, each with its own directory under OUT and its own resolved
``TrainConfig`` or evaluation request, all built and checked from the spec and the bases' configs before any
weights or data are read.

    OUT/tokenizer/tokenizer.json              data.tokenizer {bpe: V}
    OUT/data/                                 data.generated: corpus.jsonl, heldout.txt
    OUT/<family>/base/train/                  pretraining (a spec's base.model), final model in train/final
    OUT/<family>/base/eval/                   the base's evaluation (records.json, stage.json)
    OUT/<family>/<reference>/{init,train,eval} a from-scratch reference (family.references), as the base
    OUT/<family>/<variant>/seed<S>/train/     post-training of that variant with seed S (LPT or StateX)
    OUT/<family>/<variant>/seed<S>/eval/      its evaluation
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from statex.compare.spec import BUDGET_EXTRAS, CompareSpec, evaluation_key
from statex.data.tokenizers import check_vocab, is_builtin
from statex.errors import StatexError


@dataclass
class Stage:
    kind: str  # pretrain | train | eval
    family: str
    variant: str  # base | lpt | statex-<mode> | a variant's own name
    seed: int | None
    directory: Path
    train: Any = None  # the TrainConfig of a pretrain / train stage
    model: Path | None = None  # eval: the model directory it evaluates
    options: dict = field(default_factory=dict)  # eval: the request (see compare.evaluation)

    @property
    def name(self) -> str:
        seed = "" if self.seed is None else f"/seed{self.seed}"
        kind = self.directory.name if self.kind == "pretrain" else self.kind  # train, or phase<k> of several
        return f"{self.family}/{self.variant}{seed}/{kind}"

    @property
    def piece(self) -> str:
        return f"{self.family}/{self.variant}" + ("" if self.seed is None else f"/seed{self.seed}")

    @property
    def tokens(self) -> int:
        """The tokens the stage trains on (expected, for a mixture of sequence lengths)."""
        if self.train is None:
            return 0
        from statex.data.dataset import mean_sequence_length, parse_synthetic

        t = self.train
        length = mean_sequence_length(t.seq_len, parse_synthetic(t.synthetic), t.text_weight if t.data else None)
        return round(t.steps * t.batch_size * t.grad_accum * length)


@dataclass
class FamilyPlan:
    name: str
    config: Any  # the base's ModelConfig
    context: int  # the base's training context
    post_len: int  # the post-training context
    variants: dict[str, Any]  # label -> ModelConfig after the variant's expansion
    expansions: dict[str, dict[str, Any]]  # label -> TrainConfig expansion fields ({} for LPT)
    lengths: dict[str, list[int]]  # task -> evaluation lengths
    references: dict[str, Any] = field(default_factory=dict)  # from-scratch reference name -> its ModelConfig


@dataclass
class Plan:
    spec: CompareSpec
    out: Path
    device: str
    tokenizer: str  # "bytes" or a tokenizer.json path (OUT/tokenizer/tokenizer.json when trained)
    vocab_size: int
    text: str | None
    heldout: str | None
    families: dict[str, FamilyPlan]
    stages: list[Stage]

    def pretraining(self) -> list[list[Stage]]:
        """Each pretrained model's (base or reference) pretraining stages, its phases in the order they run."""
        grouped: dict[str, list[Stage]] = {}
        for stage in self.stages:
            if stage.kind == "pretrain":
                grouped.setdefault(stage.piece, []).append(stage)
        return list(grouped.values())

    def pieces(self) -> list[list[Stage]]:
        """The post-training and evaluation stages grouped into independent pieces: [train, eval] for a variant
        and seed, in the spec's family order, seeds outermost within a family; then [eval] for each base, the
        shortest pieces, last (with the from-scratch references'): side-by-side workers then finish close
        together."""
        grouped: dict[str, list[Stage]] = {}
        for stage in self.stages:
            if stage.kind != "pretrain":
                grouped.setdefault(stage.piece, []).append(stage)
        pieces = list(grouped.values())
        return [p for p in pieces if p[0].seed is not None] + [p for p in pieces if p[0].seed is None]


def _resolve_device(name: str) -> str:
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise StatexError("device cuda: no CUDA device is available")
    return "cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu"


def _budget(values: dict[str, Any], where: str) -> dict[str, Any]:
    """TrainConfig fields from a budget mapping: the comparison's extras become min_lr, warmup and save_every for
    the mapping's steps and lr, and logging defaults to 20 records per run."""
    out = {k: v for k, v in values.items() if k not in BUDGET_EXTRAS}
    steps, lr = out.get("steps", 1000), out.get("lr", 3e-4)
    for key, low in (("min_lr_ratio", 0.0), ("warmup_fraction", 0.0)):
        value = values.get(key)
        if value is not None and not (isinstance(value, (int, float)) and low <= value <= 1):
            raise StatexError(f"{where}.{key} must be a number in [0, 1], got {value!r:.40}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise StatexError(f"{where}.steps must be an integer >= 1, got {steps!r:.40}")
    if "min_lr_ratio" in values and isinstance(lr, (int, float)):  # divided: a ratio of 0.1 is lr / 10 exactly
        ratio = values["min_lr_ratio"]
        out["min_lr"] = lr / (1 / ratio) if ratio > 0 else 0.0
    if "warmup_fraction" in values:
        out["warmup"] = max(1, int(steps * values["warmup_fraction"] + 1e-9))
    if "checkpoints" in values:
        count = values["checkpoints"]
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise StatexError(f"{where}.checkpoints must be an integer >= 1, got {count!r:.40}")
        out["save_every"] = max(1, math.ceil(steps / count))
    out.setdefault("log_every", max(1, steps // 20))
    return out


def _tokenizer(spec: CompareSpec, out: Path) -> tuple[str, int]:
    from statex.data import load_tokenizer

    tok = spec.data.tokenizer
    if isinstance(tok, dict):
        size = tok["bpe"]
        if not isinstance(size, int) or isinstance(size, bool) or not 257 <= size <= 2**20:
            raise StatexError(f"data.tokenizer.bpe: a vocabulary size in [257, 2^20], got {size!r:.40}")
        if spec.data.text is None:
            raise StatexError("data.tokenizer {bpe: ...} is trained on data.text: give data.text (or --data CORPUS)")
        return str(out / "tokenizer" / "tokenizer.json"), size
    if not is_builtin(tok) and not Path(tok).exists():
        raise StatexError(f"data.tokenizer {tok}: no such file")
    return str(tok), load_tokenizer(tok).vocab_size


def _base_config(spec: CompareSpec, name: str, vocab_size: int, changes: dict[str, Any] | None = None,
                 where: str = "base.model"):
    from statex.config import gla_config, mamba2_config
    from statex.io import load_config
    from statex.models.init import check_init

    base = spec.families[name].base
    if base.path is not None:
        if not (Path(base.path) / "config.json").is_file():
            raise StatexError(f"families.{name}.base {base.path}: not a model directory (no config.json)")
        return load_config(base.path)[0]
    kwargs = {k: v for k, v in {**base.model, **(changes or {})}.items() if k != "model_type"}
    kwargs.setdefault("vocab_size", vocab_size)
    make = gla_config if base.model["model_type"] == "gla" else mamba2_config
    try:
        config = make(**kwargs)
    except (TypeError, ValueError, StatexError) as exc:
        raise StatexError(f"families.{name}.{where}: {exc}") from None
    check_init(base.init, config.family)
    return config


def _lengths(grid, context: int, post_len: int) -> list[int]:
    named = {"base": context, "post": post_len}
    return sorted({named[x] if isinstance(x, str) else x for x in grid.lengths})


def make_plan(spec: CompareSpec, out: str | Path) -> Plan:
    """Every stage of the comparison, each request resolved and checked (configs only: no weights, no data)."""
    from statex.compare.evaluation import task_versions
    from statex.expand import plan_expansion, recall_count
    from statex.train import resolve_config

    out = Path(out)
    device = _resolve_device(spec.device)
    tokenizer, vocab_size = _tokenizer(spec, out)
    text, heldout = spec.data.text, spec.data.heldout
    if spec.data.generated is not None:
        text = str(out / "data" / "corpus.jsonl")
        heldout = heldout or str(out / "data" / "heldout.txt")
    for label, path in (("data.heldout", spec.data.heldout), ("data.haystack", spec.data.haystack)):
        if path is not None and not Path(path).is_file():
            raise StatexError(f"{label} {path}: no such file")
    for part in (spec.data.text or "").split(","):
        if part and not Path(part).exists():
            raise StatexError(f"data.text {part}: no such file or directory")
    cache = str(out / "token-cache")
    common = dict(data=text, text_field=spec.data.text_field, tokenizer=tokenizer, device=device,
                  cache_dir=cache)
    families, stages = {}, []
    eval_key = evaluation_key(spec.to_dict()["eval"])
    for name, fam in spec.families.items():
        config = _base_config(spec, name, vocab_size)
        check_vocab(vocab_size, config.vocab_size, f"families.{name}", what="base")
        root = out / name
        context = fam.context
        references: dict[str, Any] = {}
        if fam.base.model is not None:
            phases = _pretraining(common, fam.base, f"families.{name}.base")
            context = context or phases[-1].seq_len
            stages += _pretrain_stages(name, "base", root, phases)
            base_model = root / "base" / "train" / "final"
            for i, ref in enumerate(fam.references):
                references[ref.name] = _base_config(spec, name, vocab_size, ref.model, f"references[{i}].model")
                stages += _pretrain_stages(name, ref.name, root, phases)
        else:
            base_model = Path(fam.base.path)
        post = _budget({**spec.train, **fam.train}, f"families.{name}.train")
        post_len = _resolve(resolve_config, {**common, **post, "model": str(base_model), "out": str(root)},
                            f"families.{name}.train").seq_len
        if context is None:
            raise StatexError(f"families.{name}.context: required for a checkpoint base (its training context, the "
                              "'base' evaluation length)")
        variants, expansions = {}, {}
        own = {v.label: dict(v.train) for v in fam.variants}
        for v in fam.variants:
            if v.mode is None:
                variants[v.label], expansions[v.label] = config, {}
                continue
            chosen_later = recall_count(v.layers)
            if chosen_later is not None and chosen_later > config.n_layer:
                raise StatexError(f"families.{name}.variants {v.label}: layers {v.layers} of a {config.n_layer}-layer "
                                  "base")
            # recall:K: the first K layers stand in (the same shapes and counts) until the base's evaluation
            # chooses them (compare.recall_layers)
            layer_spec = v.layers if chosen_later is None else ",".join(map(str, range(chosen_later)))
            try:
                layers, expanded = plan_expansion(config, layer_spec, v.mode, heads=v.heads, factor=v.factor,
                                                   dt_init=v.dt_init)
            except StatexError as exc:
                raise StatexError(f"families.{name}.variants {v.label}: {exc}") from None
            variants[v.label] = expanded
            expansions[v.label] = dict(expand_layers=layer_spec, mode=v.mode, heads=v.heads, factor=v.factor,
                                       keep_attn_norm=v.keep_attn_norm, keep_ssm_params=v.keep_ssm_params,
                                       dt_init=v.dt_init)
        ev = spec.eval
        lengths = {t: _lengths(getattr(ev, t), context, post_len) for t in ("mqar", "mqar_layers", "passkey", "niah")
                   if getattr(ev, t) is not None}
        if ev.ppl is not None:
            lengths["ppl"] = [{"base": context, "post": post_len}.get(ev.ppl.length, ev.ppl.length)]
        families[name] = FamilyPlan(name, config, context, post_len, variants, expansions, lengths, references)
        request = {"lengths": lengths, "eval_key": eval_key, "task_versions": task_versions(ev, lengths)}
        stages.append(Stage("eval", name, "base", None, root / "base" / "eval", model=base_model, options=request))
        for ref in references:
            stages.append(Stage("eval", name, ref, None, root / ref / "eval", model=root / ref / "train" / "final",
                                options=request))
        for seed in spec.seed_list:
            for v in fam.variants:
                directory = root / v.label / f"seed{seed}"
                train = _resolve(resolve_config, {**common, **post, **own[v.label], **expansions[v.label],
                                                  "model": str(base_model),
                                                  "seed": seed, "out": str(directory / "train")},
                                 f"families.{name}.train")
                stages.append(Stage("train", name, v.label, seed, directory / "train", train=train))
                stages.append(Stage("eval", name, v.label, seed, directory / "eval",
                                    model=directory / "train" / "final", options=request))
    plan = Plan(spec, out, device, tokenizer, vocab_size, text, heldout, families, stages)
    from statex.compare.evaluation import check_evaluation

    check_evaluation(plan)
    return plan


def _pretraining(common: dict[str, Any], base, where: str) -> list:
    """The TrainConfig of each pretraining phase (one without ``phases``); model and out are set per stage."""
    from statex.train import resolve_config

    configs = []
    for i, phase in enumerate(base.phases or [{}]):
        label = f"{where}.phases[{i}]" if base.phases else f"{where}.train"
        budget = _budget({**base.train, **phase}, label)
        configs.append(_resolve(resolve_config, {**common, **budget, "model": "init", "seed": base.seed,
                                                 "out": "train"}, label))
    return configs


def _pretrain_stages(family: str, variant: str, root: Path, phases: list) -> list[Stage]:
    """One stage per phase: phase k (of n) in OUT/<family>/<variant>/phase<k>, the last in .../train (the model
    every later stage reads); the first trains the init, each later one the previous phase's final model."""
    stages, model = [], root / variant / "init"
    for k, config in enumerate(phases, 1):
        directory = root / variant / ("train" if k == len(phases) else f"phase{k}")
        stages.append(Stage("pretrain", family, variant, None, directory,
                            train=dataclasses.replace(config, model=str(model), out=str(directory))))
        model = directory / "final"
    return stages


def _resolve(resolve_config, values: dict[str, Any], where: str):
    try:
        return resolve_config({}, values)
    except StatexError as exc:
        raise StatexError(f"{where}: {exc}") from None


def describe_plan(plan: Plan) -> list[str]:
    """The plan as text: each family's state and parameters per variant, and every stage with its tokens."""
    from statex.expand import recall_count
    from statex.data.dataset import parse_synthetic, sequence_lengths
    from statex.summary import describe_config

    lines = [f"{plan.spec.name}: {len(plan.stages)} stages on {plan.device}, seeds {plan.spec.seed_list}, "
             f"tokenizer {plan.tokenizer} ({plan.vocab_size} tokens)"]
    for fam in plan.families.values():
        lines.append(f"{fam.name}: base context {fam.context}, post-training context {fam.post_len}; evaluation "
                     + "; ".join(f"{t} at {', '.join(map(str, v))}" for t, v in fam.lengths.items()))
        chosen_later = {v.label: v.layers for v in plan.spec.families[fam.name].variants
                        if recall_count(v.layers) is not None}
        for label, config in {"base": fam.config, **fam.references, **fam.variants}.items():
            info = describe_config(config)
            lines.append(f"  {label:<20} state {info['total_state_elements']:>14,}  params {info['total_params']:>15,}"
                         + (f"  layers {chosen_later[label]}: chosen from the base's mqar_layers once it is evaluated"
                            if label in chosen_later else ""))
    total = 0
    for stage in plan.stages:
        total += stage.tokens
        what = f"evaluate {stage.model}"
        if stage.train is not None:
            t = stage.train
            lengths = sequence_lengths(t.seq_len, parse_synthetic(t.synthetic), t.data is not None)
            shape = f"{t.seq_len}" if len(lengths) <= 1 else f"{min(lengths)}-{max(lengths)}, expected"
            what = f"{stage.tokens:,} tokens ({t.steps} steps x {t.batch_size} x {shape})"
        lines.append(f"  {stage.name:<40} {what}")
    lines.append(f"training tokens in all: {total:,}")
    return lines
