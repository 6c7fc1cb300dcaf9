"""Strict JSON out of numbers that may not be finite: a NaN or infinite float is written as ``null`` and named
in a ``nonfinite`` field beside it, so every file statex writes parses with any JSON reader (the standard
forbids bare ``NaN`` and ``Infinity``)."""
from __future__ import annotations

import json
import math
from typing import Any


def _label(value: float) -> str:
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def sanitise(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None; a mapping that held one gains
    ``"nonfinite": {key: "nan" | "inf" | "-inf"}``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        out, flagged = {}, {}
        for key, item in value.items():
            if isinstance(item, float) and not math.isfinite(item):
                flagged[key] = _label(item)
            out[key] = sanitise(item)
        if flagged:
            out["nonfinite"] = flagged
        return out
    if isinstance(value, (list, tuple)):
        return [sanitise(item) for item in value]
    return value


def dumps_strict(value: Any, **kwargs: Any) -> str:
    return json.dumps(sanitise(value), allow_nan=False, **kwargs)
