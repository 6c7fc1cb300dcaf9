"""The comparison's specification: a typed tree of dataclasses read from a YAML or JSON file, with flag overrides
(``--set a.b=VALUE``), validated before any work with one-line errors that name the field.

    name: my comparison
    seeds: 3                                  # post-training seeds 0, 1, 2 (or a list)
    families:                                 # one entry per base, in the order they run and are reported
      gla:
        base: path/to/gla-checkpoint          # a checkpoint directory (relative to the spec file), or
        # base: {model: {model_type: gla, d_model: 512, ...}, init: {...}, train: {steps: 3000, ...}}
        context: 2048                         # the base's training context (the "base" evaluation length)
        variants: [lpt, {mode: reinit, layers: "every:6", heads: 1}]
        train: {steps: 600}                   # this family's departures from the shared budget
    data: {text: corpus/train, heldout: corpus/heldout/heldout.txt, tokenizer: path/to/tokenizer.json}
    train: {seq_len: 8192, batch_size: 16, steps: 500, lr: 3.0e-4, min_lr_ratio: 0.1, warmup_fraction: 0.05}
    eval: {mqar: {pairs: [16, 64], lengths: [base, post]}, ppl: {length: 8192, windows: 64}}
    verdict: {capacity_threshold: 0.9, min_gain: 0.0, loss_tolerance: 0.05}

docs/compare.md describes every field.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from statex.data.tokenizers import is_builtin
from statex.errors import StatexError
from statex.validation import check_field_types, describe_type, short_repr, value_matches

SPEC_FILE_LIMIT = 2**20
# TrainConfig fields the comparison sets itself, per stage: a spec that names them would break the protocol
ENGINE_TRAIN_FIELDS = ("model", "init", "out", "resume", "seed", "expand_layers", "mode", "heads", "factor",
                       "expand_seed", "tokenizer", "data", "device", "progress", "stop_at_step", "threads")
# what a variant may set for itself: ablations of how it trains on the shared budget and data (state passing)
VARIANT_TRAIN_FIELDS = ("state_passing",)
# budget conveniences of the comparison, turned into TrainConfig fields per stage (they scale with the steps)
BUDGET_EXTRAS = ("min_lr_ratio", "warmup_fraction", "checkpoints")


@dataclass
class BaseSpec:
    """A family's base: an existing checkpoint (``path``), or one pretrained by the comparison itself (``model``:
    keyword arguments of gla_config / mamba2_config with ``model_type``; ``init``: departures from the default
    init, see ``statex.models.init``; ``train``: its pretraining, TrainConfig fields and budget extras).
    ``phases``: pretraining in that many runs one after another, each starting from the one before's final model
    (the first from the init); each phase's settings are ``train`` with the phase's fields over it (e.g. a recall
    curriculum first, then text with recall kept)."""

    path: str | None = None
    model: dict | None = None
    init: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    phases: list = field(default_factory=list)
    seed: int = 0


@dataclass
class VariantSpec:
    """``lpt`` (``mode`` null: the base post-trained unchanged) or a StateX mode with its layers and sizes."""

    name: str | None = None  # default "lpt" or "statex-<mode>"
    mode: str | None = None
    layers: Any = None  # a layer spec: "every:6", "0,6,12", "frac:0.25", "all", or a list
    heads: int = 1  # GLA: heads per expanded layer
    factor: int = 4  # Mamba2: d_state multiplier
    keep_attn_norm: bool = False
    keep_ssm_params: bool = False
    dt_init: str = "reset"
    train: dict = field(default_factory=dict)  # VARIANT_TRAIN_FIELDS: how it trains, never its budget

    @property
    def label(self) -> str:
        return self.name or ("lpt" if self.mode is None else f"statex-{self.mode}")


@dataclass
class ReferenceSpec:
    """A model trained from scratch beside a pretrained base, with the base's init and pretraining but the
    ``model`` fields given here changed (e.g. {num_heads: 1} or {d_state: 64}: the same model with a larger state),
    and evaluated on the same grid: what a larger state buys when trained from the start."""

    name: str
    model: dict = field(default_factory=dict)


@dataclass
class FamilySpec:
    base: BaseSpec
    context: int | None = None  # the base's training context; a pretrained base's is its seq_len
    variants: list = field(default_factory=lambda: ["lpt"])
    train: dict = field(default_factory=dict)
    references: list = field(default_factory=list)  # ReferenceSpec mappings (a pretrained base only)


@dataclass
class DataSpec:
    """``text``: corpus files or directories (comma-separated, as ``statex train --data``); ``generated``: template
    text written into OUT/data instead ({documents, seed, heldout_documents}); ``heldout``: a text file for
    perplexity (default: the generated held-out text); ``haystack``: NIAH's essay haystack; ``tokenizer``:
    ``bytes``, a tokenizer.json, or {bpe: VOCAB_SIZE} (a byte-level BPE trained on ``text`` into OUT/tokenizer)."""

    text: str | None = None
    generated: dict | None = None
    heldout: str | None = None
    haystack: str | None = None
    tokenizer: Any = "bytes"
    text_field: str = "text"


@dataclass
class MQARSpec:
    pairs: list = field(default_factory=lambda: [4, 16, 64])
    lengths: list = field(default_factory=lambda: ["base", "post"])  # integers, "base" or "post"
    n: int = 256
    batch_size: int = 64
    keys: int | None = None  # keys and values from this many ids each (default half the vocabulary each)


@dataclass
class NeedleSpec:
    """Passkey or NIAH: depth x length heatmaps. ``forced``: the answer also scored teacher-forced (depth 0.5)."""

    lengths: list = field(default_factory=lambda: ["base", "post"])
    depths: list = field(default_factory=lambda: [0.0, 0.5, 1.0])
    n: int = 8
    variants: list = field(default_factory=lambda: [1])  # NIAH: single_1, single_2 (needs a haystack), single_3
    forced: bool = False


@dataclass
class PPLSpec:
    length: Any = "post"
    windows: int = 64
    batch_size: int = 8


@dataclass
class RecallQASpec:
    files: list = field(default_factory=list)
    n: int = 100
    max_tokens: int | None = None


@dataclass
class LMEvalSpec:
    tasks: list = field(default_factory=list)
    limit: int | None = None
    include: str | None = None


@dataclass
class EvalSpec:
    seed: int = 1234  # the same evaluation sequences for every model (paired comparisons)
    batch_size: int = 8
    prefill_chunk: int = 2048
    mqar: MQARSpec | None = None
    mqar_layers: MQARSpec | None = None  # which layers carry MQAR's pairs (keys default to mqar's)
    passkey: NeedleSpec | None = None
    niah: NeedleSpec | None = None
    ppl: PPLSpec | None = None
    recall_qa: RecallQASpec | None = None
    lm_eval: LMEvalSpec | None = None


@dataclass
class VerdictSpec:
    """StateX beats LPT when, over the MQAR cells where the base scores below ``capacity_threshold``, its mean
    gain over seeds is at least ``min_gain`` (with two or more seeds: its 95% interval also lies above 0) and its
    held-out loss is within ``loss_tolerance`` of LPT's; "no recall" when no MQAR cell of the base, LPT or the
    mode exceeds ``recall_floor``."""

    capacity_threshold: float = 0.9
    min_gain: float = 0.0
    loss_tolerance: float = 0.05
    recall_floor: float = 0.0


@dataclass
class CompareSpec:
    families: dict
    name: str = "StateX vs LPT"
    seeds: Any = 3  # N (seeds 0..N-1) or a list of seeds
    data: DataSpec = field(default_factory=DataSpec)
    train: dict = field(default_factory=dict)
    eval: EvalSpec = field(default_factory=EvalSpec)
    verdict: VerdictSpec = field(default_factory=VerdictSpec)
    device: str = "auto"  # auto | cpu | cuda

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


# ------------------------------------------------------------------------------------------------ reading

def _build(cls, data: Any, where: str):
    """An instance of the dataclass ``cls`` from a mapping, nested dataclasses included; unknown or missing
    fields and wrong types are refused naming their dotted path."""
    label = where.rstrip(".") or "the spec"
    if not isinstance(data, dict):
        raise StatexError(f"{label} must be a mapping, got {short_repr(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        raise StatexError(f"{where}{unknown[0]}: unknown field (known: {', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        hint = hints[name]
        nested = _dataclass_of(hint)
        if nested is not None and value is not None:
            value = _build(nested, {} if value is True else value, f"{where}{name}.")
        elif not value_matches(value, hint):
            raise StatexError(f"{where}{name} must be {describe_type(hint)}, got {short_repr(value)}")
        values[name] = value
    missing = [f.name for f in fields.values() if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise StatexError(f"{where}{missing[0]}: required")
    obj = cls(**values)
    check_field_types(obj, where, error=StatexError)
    return obj


def _dataclass_of(hint):
    for arg in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(arg):
            return arg
    return None



def spec_from_dict(data: Any, root: str | Path | None = None) -> CompareSpec:
    """The typed spec of a mapping (relative paths resolved against ``root``, the spec file's directory),
    validated (``validate_spec``)."""
    if not isinstance(data, dict):
        raise StatexError("the spec must be a mapping of fields to values")
    data = dict(data)
    families = data.get("families")
    if not isinstance(families, dict) or not families:
        raise StatexError("families: required, a mapping of family names to {base, variants, ...}")
    built = {}
    for name, fam in families.items():
        if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_." for c in name):
            raise StatexError(f"families: {name!r} is not a usable name (letters, digits, - _ .)")
        if isinstance(fam, dict) and isinstance(fam.get("base"), str):
            fam = {**fam, "base": {"path": fam["base"]}}
        family = _build(FamilySpec, fam, f"families.{name}.")
        family.variants = [_variant(v, f"families.{name}.variants[{i}]") for i, v in enumerate(family.variants)]
        family.references = [_build(ReferenceSpec, r, f"families.{name}.references[{i}].")
                             for i, r in enumerate(family.references)]
        built[name] = family
    data["families"] = built
    spec = _build(CompareSpec, data, "")
    if root is not None:
        _resolve_paths(spec, Path(root))
    from statex.compare.validate import validate_spec

    return validate_spec(spec)


def _variant(value: Any, where: str) -> VariantSpec:
    if value == "lpt":
        return VariantSpec()
    if isinstance(value, str):
        return VariantSpec(mode=value)
    return _build(VariantSpec, value, where + ".")


def _resolve_paths(spec: CompareSpec, root: Path) -> None:
    def resolve(path: str | None) -> str | None:
        if path is None:
            return None
        return ",".join(p if Path(p).is_absolute() else str(root / p) for p in str(path).split(","))

    for fam in spec.families.values():
        fam.base.path = resolve(fam.base.path)
    data = spec.data
    data.text, data.heldout, data.haystack = resolve(data.text), resolve(data.heldout), resolve(data.haystack)
    if isinstance(data.tokenizer, str) and not is_builtin(data.tokenizer):
        data.tokenizer = resolve(data.tokenizer)
    if spec.eval.recall_qa is not None:
        spec.eval.recall_qa.files = [resolve(f) for f in spec.eval.recall_qa.files]


def read_spec_file(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a YAML or JSON spec file (size-limited, no YAML aliases)."""
    from statex.train.config import read_mapping_file

    if not Path(path).is_file():
        raise StatexError(f"{path}: no such spec file")
    return read_mapping_file(path, SPEC_FILE_LIMIT, "spec file")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=VALUE`` -> (["a", "b", "c"], VALUE), the value read as a YAML scalar or flow collection."""
    from statex.train.config import read_yaml

    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise StatexError(f"--set {text}: expected FIELD.PATH=VALUE, e.g. train.steps=100")
    value = read_yaml(raw, f"--set {key}") if raw.strip() else None
    if isinstance(value, str):  # YAML 1.1 reads 2e-3 (no dot) as a string; on a command line it is a number
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is not None and number == number and abs(number) != float("inf"):
            value = number
    return key.strip().split("."), value


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``data[path[0]][path[1]]... = value`` in the raw mapping, creating mappings on the way."""
    node = data
    for i, part in enumerate(path[:-1]):
        child = node.get(part)
        if isinstance(child, str) and part == "base":  # a base given as a path becomes {path: ...}
            child = node[part] = {"path": child}
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise StatexError(f"--set {'.'.join(path)}: {'.'.join(path[:i + 1])} is not a mapping")
        node = child
    node[path[-1]] = value


def load_spec(path: str | Path, overrides: list[tuple[list[str], Any]] = ()) -> CompareSpec:
    """The spec of ``path`` with ``overrides`` (from ``parse_override``) applied, paths relative to the file."""
    data = read_spec_file(path)
    for keys, value in overrides:
        apply_override(data, keys, value)
    return spec_from_dict(data, root=Path(path).resolve().parent)


def evaluation_key(evaluation: dict[str, Any]) -> str:
    """A short digest of a spec's ``eval`` section (as ``CompareSpec.to_dict`` writes it): an evaluation stage
    is finished only for the section it ran with."""
    import hashlib

    return hashlib.sha256(json.dumps(evaluation, sort_keys=True).encode()).hexdigest()[:16]


def changed_field(before: Any, now: Any, where: str = "") -> str | None:
    """The dotted path of the first field that differs between two spec mappings (None when equal)."""
    if isinstance(before, dict) and isinstance(now, dict):
        for key in list(dict.fromkeys([*before, *now])):
            found = changed_field(before.get(key, "<absent>"), now.get(key, "<absent>"), f"{where}{key}.")
            if found:
                return found
        return None
    return None if before == now else where.rstrip(".") or "the spec"
