"""What the demo runs: the pretraining recipe of each shipped base, and the post-training comparison.

Two layers of settings, because they change at different times:
- ``BaseRecipe``: how a family's miniature base is pretrained. The bases shipped in ``statex/demo/bases/``
  are the output of exactly this recipe (``statex demo pretrain``); a test fails when the recipe here and
  the one recorded beside the shipped weights differ, so a changed recipe forces the bases to be re-made.
- ``DemoSettings``: the post-training comparison run on every ``statex demo``: LPT and StateX from the same
  base with an identical budget (same data order, tokens, steps, learning rate), over several seeds.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

FAMILIES = ("gla", "mamba2")


@dataclass
class BaseRecipe:
    """Pretraining of one family's miniature base on generated data (MQAR key-value sequences and template
    text, byte tokenizer) at a short context."""

    family: str
    model: dict[str, Any]  # keyword arguments of gla_config / mamba2_config (the vocabulary is the byte tokenizer's)
    init: dict[str, Any]  # departures from the library's default init (see ``bases.build_initial_model``)
    seq_len: int = 64
    steps: int = 3000
    batch: int = 64
    lr: float = 3e-3
    pairs: tuple[int, int] = (4, 8)  # MQAR pairs per training sequence, drawn uniformly
    mix: dict[str, float] = field(default_factory=lambda: {"text": 0.1, "mqar": 0.9})
    seed: int = 0
    corpus_documents: int = 2000
    corpus_seed: int = 0
    eval_pairs: tuple[int, ...] = (2, 4, 8, 16, 32, 48, 64)  # the base's recorded capacity curve
    eval_lengths: tuple[int, ...] = (64, 128, 256)
    eval_n: int = 256

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


@dataclass
class FamilySettings:
    """The StateX side of one family's comparison."""

    family: str
    base_seq_len: int  # the base's pretraining context (evaluated besides the post-training one)
    expand_layers: list[int]
    modes: tuple[str, ...]  # StateX modes compared with LPT (the paper's reinit and the inheriting one)
    heads: int = 1  # GLA heads per expanded layer
    factor: int = 4  # Mamba2 d_state multiplier
    lr: float = 3e-3  # post-training learning rate (LPT and StateX alike)
    pairs: tuple[int, int] = (8, 48)  # MQAR pairs per post-training sequence, drawn uniformly
    steps: int = 300  # post-training steps (LPT and StateX alike)
    mix: dict[str, float] = field(default_factory=lambda: {"text": 0.1, "mqar": 0.9})  # post-training data


@dataclass
class DemoSettings:
    families: list[FamilySettings]
    seeds: int = 3  # post-training seeds per variant (seed s: data order and expansion draws)
    seq_len: int = 256  # post-training context (longer than every base's)
    batch: int = 16
    eval_n: int = 256  # sequences per MQAR cell
    eval_seed: int = 1234  # the same evaluation sequences for every model and seed (paired comparisons)
    mqar_pairs: tuple[int, ...] = (4, 8, 16, 24, 32, 48, 64)  # at the base's length and at seq_len
    heldout_length: int = 256
    heldout_documents: int = 400
    capacity_threshold: float = 0.9  # cells where the base scores below this are "past its capacity"
    loss_tolerance: float = 0.05  # StateX's held-out loss may exceed LPT's by at most this fraction

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def default_recipes() -> dict[str, BaseRecipe]:
    """The recipes of the shipped bases (docs/results.md: how they were chosen)."""
    return {
        # 2 layers of 4 heads with 8 x 16 states: recalls a few pairs perfectly, loses them as pairs grow
        "gla": BaseRecipe(
            "gla", dict(d_model=64, n_layer=2, num_heads=4, expand_k=0.5, expand_v=1.0, intermediate_size=128,
                        use_short_conv=True),
            init={"embedding_std": 1.0}, seq_len=64, pairs=(4, 8), lr=3e-3, steps=3000),
        # 2 layers, d_state 8 (one group): the key side of the state holds 8 directions
        "mamba2": BaseRecipe(
            "mamba2", dict(d_model=64, n_layer=2, d_state=8, headdim=16, expand=2, ngroups=1, tie_embeddings=False),
            init={"embedding_std": 1.0, "dt_range": [0.01, 0.1], "a_range": [0.1, 1.0], "D": 0.0},
            seq_len=128, pairs=(4, 32), lr=6e-3, steps=3000),
    }


def default_settings(quick: bool = False) -> DemoSettings:
    """The comparison ``statex demo`` runs from the shipped bases (about 12 minutes on 2 cores); ``quick``
    runs a few steps only, to check the whole path."""
    recipes = default_recipes()
    settings = DemoSettings([
        FamilySettings("gla", recipes["gla"].seq_len, expand_layers=[1], modes=("reinit", "inherit"), heads=1,
                       lr=3e-3, pairs=(8, 48), steps=600, mix={"text": 0.5, "mqar": 0.5}),
        FamilySettings("mamba2", recipes["mamba2"].seq_len, expand_layers=[1], modes=("reinit", "preserve"),
                       factor=4, lr=3e-3, pairs=(16, 64), steps=300, mix={"text": 0.1, "mqar": 0.9}),
    ])
    if quick:
        settings = dataclasses.replace(settings, seeds=2, batch=4, eval_n=8, mqar_pairs=(4, 16),
                                       heldout_length=128, heldout_documents=40,
                                       families=[dataclasses.replace(f, steps=6) for f in settings.families])
    return settings


BUDGET_KNOBS = ("seeds", "steps", "batch")


def apply_overrides(settings: DemoSettings, modes: list[str] | None = None,
                    expand_layers: list[int] | str | None = None, heads: int | None = None,
                    factor: int | None = None, lr: float | None = None, n_layers: dict[str, int] | None = None,
                    **budget: int | None) -> DemoSettings:
    """The knobs of ``statex demo``: StateX modes, expanded layers, GLA heads, Mamba2 factor, learning rate
    (ablations), and the budget (``BUDGET_KNOBS``). ``n_layers``: each family's base depth, for resolving
    layer specs. Raises ValueError on a bad value."""
    from statex.errors import StatexError
    from statex.expand import GLA_MODES, MAMBA2_MODES, select_layers

    unknown = set(budget) - set(BUDGET_KNOBS)
    if unknown:
        raise ValueError(f"unknown demo setting(s): {', '.join(sorted(unknown))}")
    for name, value in budget.items():
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")
    steps = budget.pop("steps", None)
    settings = dataclasses.replace(settings, **{k: v for k, v in budget.items() if v is not None})
    bad = [m for m in modes or () if m not in GLA_MODES + MAMBA2_MODES]
    if bad:
        raise ValueError(f"unknown StateX mode(s) {', '.join(bad)} (GLA: {', '.join(GLA_MODES)}; "
                         f"Mamba2: {', '.join(MAMBA2_MODES)})")
    if heads is not None and heads < 1:
        raise ValueError(f"--heads must be >= 1, got {heads}")
    if factor is not None and factor < 2:
        raise ValueError(f"--factor must be >= 2, got {factor}")
    if lr is not None and lr <= 0:
        raise ValueError(f"--lr must be > 0, got {lr}")
    families = []
    for fam in settings.families:
        fam = dataclasses.replace(fam)
        if modes:
            valid = GLA_MODES if fam.family == "gla" else MAMBA2_MODES
            fam.modes = tuple(m for m in modes if m in valid) or fam.modes
        if expand_layers is not None:
            depth = (n_layers or {}).get(fam.family, max(fam.expand_layers) + 1)
            try:
                fam.expand_layers = select_layers(expand_layers, depth)
            except StatexError as exc:
                raise ValueError(f"--expand-layers for {fam.family}: {exc}") from None
        fam.heads = heads if heads is not None else fam.heads
        fam.factor = factor if factor is not None else fam.factor
        fam.lr = lr if lr is not None else fam.lr
        fam.steps = steps if steps is not None else fam.steps
        families.append(fam)
    return dataclasses.replace(settings, families=families)


def _plain(value: Any) -> Any:
    """JSON-shaped: tuples become lists (so a recipe read back from JSON compares equal)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
