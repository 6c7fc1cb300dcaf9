"""Learning-rate schedules as pure functions of the step (so resuming needs only the step)."""
from __future__ import annotations

import math


def learning_rate(step: int, total: int, peak: float, minimum: float, warmup: int, kind: str,
                  decay_fraction: float = 0.2) -> float:
    """lr for optimizer step ``step`` (0-based).

    Linear warmup from peak/warmup to peak over ``warmup`` steps, then
    - cosine: cosine from peak to ``minimum`` at the last step;
    - constant: peak;
    - wsd (warmup-stable-decay): peak until the last ``decay_fraction`` of the steps, then linear to ``minimum``.
    """
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    if kind == "constant":
        return peak
    if kind == "cosine":
        span = max(1, total - warmup - 1)
        progress = min(1.0, (step - warmup) / span)
        return minimum + 0.5 * (peak - minimum) * (1 + math.cos(math.pi * progress))
    if kind == "wsd":
        decay_steps = max(1, round(decay_fraction * total))
        decay_start = total - decay_steps
        if step < decay_start:
            return peak
        progress = min(1.0, (step - decay_start + 1) / decay_steps)
        return peak + (minimum - peak) * progress
    raise ValueError(f"unknown schedule {kind!r}")
