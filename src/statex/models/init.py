"""Departures from the library's default initialisation for a model trained from scratch.

Small recurrent models learn associative recall far faster with a few departures from the defaults of fla and
mamba_ssm (measured on the CPU miniature, docs/results.md): a wide embedding init, and for Mamba2 a slower decay
and no skip connection, so that the state, not the skip path, carries the tokens.
"""
from __future__ import annotations

from typing import Any

import torch

from statex.errors import StatexError

INIT_OPTIONS = ("embedding_std", "dt_range", "a_range", "D")


def initialise(config, init: dict[str, Any], seed: int):
    """A freshly initialised model of ``config``. ``init`` departs from the library's default init:
    ``embedding_std`` (normal init of the embedding, e.g. 1.0 instead of 0.02); Mamba2 ``dt_range`` (dt
    log-uniform in it instead of [0.001, 0.1]), ``a_range`` (A uniform in it instead of [1, 16]: slower decay, a
    longer memory) and ``D`` (the skip weight, e.g. 0 instead of 1)."""
    from statex.models.lm import build_model

    check_init(init, config.family)
    model = build_model(config, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if "embedding_std" in init:
            torch.nn.init.normal_(model.embed_tokens.weight, std=init["embedding_std"], generator=generator)
        if config.family == "mamba2":
            ssm = {}
            if "dt_range" in init:
                ssm["dt_min"], ssm["dt_max"] = init["dt_range"]
            if "a_range" in init:
                ssm["a_range"] = tuple(init["a_range"])
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                for block in model.backbone.layers:
                    block.mixer.reset_ssm_parameters(**ssm)
                    if "D" in init:
                        block.mixer.D.fill_(init["D"])
    return model


def check_init(init: dict[str, Any], family: str) -> None:
    """One-line errors for unknown options and values of the wrong shape, before any model is built."""
    unknown = set(init) - set(INIT_OPTIONS)
    if unknown:
        raise StatexError(f"unknown init option(s) {', '.join(sorted(unknown))} (known: {', '.join(INIT_OPTIONS)})")
    number = (int, float)
    if "embedding_std" in init and not (isinstance(init["embedding_std"], number) and init["embedding_std"] > 0):
        raise StatexError(f"init.embedding_std must be a number > 0, got {init['embedding_std']!r:.40}")
    for name in ("dt_range", "a_range"):
        if name in init:
            value = init[name]
            if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, number) for v in value)
                    and 0 < value[0] <= value[1]):
                raise StatexError(f"init.{name} must be [low, high] with 0 < low <= high, got {value!r:.40}")
    if "D" in init and not isinstance(init["D"], number):
        raise StatexError(f"init.D must be a number, got {init['D']!r:.40}")
    if family != "mamba2" and set(init) & {"dt_range", "a_range", "D"}:
        raise StatexError("init: dt_range, a_range and D belong to Mamba2 models")
