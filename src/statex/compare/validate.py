"""The checks of a comparison spec that its values alone reveal, each a one-line error naming the field (the
bases' configs, the stages' training options and the evaluation requests are checked when the plan is built)."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from statex.errors import StatexError
from statex.validation import short_repr

if TYPE_CHECKING:
    from statex.compare.spec import CompareSpec



def validate_spec(spec: CompareSpec) -> CompareSpec:
    """Every error of a spec that its values alone reveal (the bases' configs are checked by the plan)."""
    from statex.compare.spec import VARIANT_TRAIN_FIELDS
    from statex.expand import GLA_MODES, MAMBA2_MODES, recall_count

    seeds = spec.seed_list
    if isinstance(spec.seeds, int) and not 1 <= spec.seeds <= 1000:
        raise StatexError(f"seeds must be between 1 and 1000, got {spec.seeds}")
    if not seeds or any(not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < 2**63 for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise StatexError(f"seeds: a count or a list of distinct integers >= 0, got {short_repr(spec.seeds)}")
    if spec.device not in ("auto", "cpu", "cuda"):
        raise StatexError(f"device must be auto, cpu or cuda, got {spec.device!r}")
    for name, fam in spec.families.items():
        where = f"families.{name}"
        base = fam.base
        if (base.path is None) == (base.model is None):
            raise StatexError(f"{where}.base: give exactly one of a checkpoint path or a model to pretrain")
        if base.path is not None and (base.init or base.train or base.phases):
            raise StatexError(f"{where}.base: init, train and phases belong to a pretrained base (model), not a path")
        for i, phase in enumerate(base.phases):
            if not isinstance(phase, dict) or not phase:
                raise StatexError(f"{where}.base.phases[{i}]: a mapping of training settings over base.train, got "
                                  f"{short_repr(phase)}")
            for key in phase:
                if key in ("model", "init", "out", "resume", "expand_layers", "mode"):
                    raise StatexError(f"{where}.base.phases[{i}].{key}: set by the comparison itself")
        if base.model is not None:
            if base.model.get("model_type") not in ("gla", "mamba2"):
                raise StatexError(f"{where}.base.model.model_type must be gla or mamba2, got "
                                  f"{short_repr(base.model.get('model_type'))}")
            if not base.train:
                raise StatexError(f"{where}.base.train: a pretrained base needs its training settings")
        if fam.context is not None and fam.context < 1:
            raise StatexError(f"{where}.context must be >= 1, got {fam.context}")
        labels = [v.label for v in fam.variants]
        if len(set(labels)) != len(labels) or "base" in labels:
            raise StatexError(f"{where}.variants: names must be distinct and not 'base' (got {', '.join(labels)})")
        if "lpt" not in labels:
            raise StatexError(f"{where}.variants: the comparison needs an lpt variant (the baseline)")
        names = [r.name for r in fam.references]
        for i, ref in enumerate(fam.references):
            if base.model is None:
                raise StatexError(f"{where}.references: from-scratch references need a base pretrained here "
                                  "(base.model), whose init and pretraining they share")
            if not ref.name or not all(c.isalnum() or c in "-_." for c in ref.name) or ref.name in labels \
                    or ref.name == "base" or names.count(ref.name) > 1:
                raise StatexError(f"{where}.references[{i}].name: {ref.name!r} must be a distinct name (letters, "
                                  "digits, - _ .), not 'base' nor a variant's")
            if "model_type" in ref.model or "vocab_size" in ref.model:
                raise StatexError(f"{where}.references[{i}].model: model_type and vocab_size are the base's")
        for i, v in enumerate(fam.variants):
            for key in v.train:
                if key not in VARIANT_TRAIN_FIELDS:
                    raise StatexError(f"{where}.variants[{i}].train.{key}: a variant may set only "
                                      f"{', '.join(VARIANT_TRAIN_FIELDS)} (the budget is shared by every variant)")
            if v.mode is None:
                if v.layers is not None:
                    raise StatexError(f"{where}.variants[{i}]: layers without a StateX mode")
                continue
            if v.mode not in GLA_MODES + MAMBA2_MODES:
                raise StatexError(f"{where}.variants[{i}].mode: unknown StateX mode {v.mode!r} (GLA: "
                                  f"{', '.join(GLA_MODES)}; Mamba2: {', '.join(MAMBA2_MODES)})")
            if v.layers is None:
                raise StatexError(f"{where}.variants[{i}].layers: required for a StateX mode (e.g. every:6)")
            if recall_count(v.layers) is not None and spec.eval.mqar_layers is None:
                raise StatexError(f"{where}.variants[{i}].layers {v.layers}: needs eval.mqar_layers (the base's "
                                  "measurement of which layers hold its recall)")
            if v.heads < 1 or v.factor < 2:
                raise StatexError(f"{where}.variants[{i}]: heads must be >= 1 and factor >= 2")
        for key in fam.train:
            _check_train_key(key, f"{where}.train")
        for key in base.train:
            if key in ("model", "init", "out", "resume", "expand_layers", "mode"):
                raise StatexError(f"{where}.base.train.{key}: set by the comparison itself")
    for key in spec.train:
        _check_train_key(key, "train")
    data = spec.data
    if data.generated is not None:
        unknown = set(data.generated) - {"documents", "seed", "heldout_documents"}
        if unknown:
            raise StatexError(f"data.generated.{sorted(unknown)[0]}: unknown field (documents, seed, "
                              "heldout_documents)")
        if data.text is not None:
            raise StatexError("data: give text or generated, not both")
    if not (data.tokenizer == "bytes" or isinstance(data.tokenizer, str)
            or (isinstance(data.tokenizer, dict) and set(data.tokenizer) == {"bpe"})):
        raise StatexError(f"data.tokenizer must be bytes, ids:N, a tokenizer.json path or {{bpe: VOCAB_SIZE}}, got "
                          f"{short_repr(data.tokenizer)}")
    _validate_eval(spec)
    v = spec.verdict
    if not 0 <= v.capacity_threshold <= 1 or not 0 <= v.recall_floor <= 1 or v.loss_tolerance < 0:
        raise StatexError("verdict: capacity_threshold and recall_floor must be in [0, 1], loss_tolerance >= 0")
    return spec


def _check_train_key(key: str, where: str) -> None:
    from statex.compare.spec import BUDGET_EXTRAS, ENGINE_TRAIN_FIELDS
    from statex.train.config import TrainConfig

    if key in ENGINE_TRAIN_FIELDS:
        raise StatexError(f"{where}.{key}: set by the comparison itself for every stage")
    if key not in BUDGET_EXTRAS and key not in {f.name for f in dataclasses.fields(TrainConfig)}:
        raise StatexError(f"{where}.{key}: unknown training option")


def _validate_eval(spec: CompareSpec) -> None:
    ev = spec.eval
    tasks = [t for t in ("mqar", "mqar_layers", "passkey", "niah", "ppl", "recall_qa", "lm_eval")
             if getattr(ev, t) is not None]
    if not tasks:
        raise StatexError("eval: no task (give one or more of mqar, mqar_layers, passkey, niah, ppl, recall_qa, "
                          "lm_eval)")
    for name, value in (("batch_size", ev.batch_size), ("prefill_chunk", ev.prefill_chunk)):
        if value < 1:
            raise StatexError(f"eval.{name} must be >= 1, got {value}")
    grids = {"mqar": ev.mqar, "mqar_layers": ev.mqar_layers, "passkey": ev.passkey, "niah": ev.niah}
    for task, grid in grids.items():
        if grid is None:
            continue
        for length in grid.lengths:
            if not (length in ("base", "post") or (isinstance(length, int) and not isinstance(length, bool)
                                                   and 1 <= length <= 2**24)):
                raise StatexError(f"eval.{task}.lengths: {short_repr(length)} is not a length (an integer, base or post)")
        if grid.n < 1:
            raise StatexError(f"eval.{task}.n must be >= 1, got {grid.n}")
    for task in ("mqar", "mqar_layers"):
        grid = grids[task]
        if grid is not None and (not grid.pairs or any(not isinstance(p, int) or p < 1 for p in grid.pairs)):
            raise StatexError(f"eval.{task}.pairs: a list of integers >= 1, got {short_repr(grid.pairs)}")
    for task in ("passkey", "niah"):
        grid = grids[task]
        if grid is not None and any(not isinstance(d, (int, float)) or not 0 <= d <= 1 for d in grid.depths):
            raise StatexError(f"eval.{task}.depths: numbers in [0, 1], got {short_repr(grid.depths)}")
    if ev.niah is not None and 2 in ev.niah.variants and spec.data.haystack is None:
        raise StatexError("eval.niah.variants: single_2 needs data.haystack (a long local text)")
    if ev.ppl is not None:
        if not (ev.ppl.length in ("base", "post") or (isinstance(ev.ppl.length, int) and ev.ppl.length >= 1)):
            raise StatexError(f"eval.ppl.length: an integer, base or post, got {short_repr(ev.ppl.length)}")
        if ev.ppl.windows < 1 or ev.ppl.batch_size < 1:
            raise StatexError("eval.ppl: windows and batch_size must be >= 1")
        if spec.data.heldout is None and spec.data.generated is None:
            raise StatexError("eval.ppl needs data.heldout (a held-out text file) or data.generated")
    if ev.recall_qa is not None and not ev.recall_qa.files:
        raise StatexError("eval.recall_qa.files: one or more JSONL files (Based / JRT schema)")
    if ev.lm_eval is not None and not ev.lm_eval.tasks:
        raise StatexError("eval.lm_eval.tasks: one or more lm-evaluation-harness task names")
