"""How the demo's miniature bases are pretrained: ``BaseRecipe``. The bases shipped in ``statex/demo/bases/`` are
the output of exactly these recipes (``statex demo pretrain``); a test fails when a recipe here and the one
recorded beside the shipped weights differ, so a changed recipe forces the bases to be re-made. The post-training
comparison run from them is ``spec.yaml`` beside this file."""
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


def _plain(value: Any) -> Any:
    """JSON-shaped: tuples become lists (so a recipe read back from JSON compares equal)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
