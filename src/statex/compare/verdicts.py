"""Means with 95% intervals over seeds, and the verdict rule of a comparison.

The rule (``VerdictSpec``): the cells past the base's capacity are the MQAR cells where the base scores below
``capacity_threshold``. For each seed s, gain d_s = mean over those cells of (StateX - LPT), both post-trained
from the same base with seed s (the same data order). StateX beats LPT when the mean of d_s is at least
``min_gain``, with two or more seeds its 95% t-interval lies above 0, and its held-out loss (the ``ppl`` task,
summed over seeds) is within ``loss_tolerance`` of LPT's (not applied when perplexity was not evaluated). When
no MQAR cell of the base, LPT or that mode scores above ``recall_floor`` the verdict is "no recall": the models
learned no recall to compare, which is evidence neither way; "no cells" when the base is at or above the
threshold in every cell both were evaluated on (the grid does not reach past the base's capacity). Passkey and NIAH are reported beside the verdict as
gains over the cells longer than the post-training context, where LPT has not trained.
"""
from __future__ import annotations

import math
from typing import Any

# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (then the normal's)
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
NEEDLE_TASKS = ("passkey", "niah_single_1", "niah_single_2", "niah_single_3")


def mean_ci(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% t-interval); nan for no values, and a nan half-width for one value."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, (_T95[n - 2] if n - 1 <= len(_T95) else 1.96) * sd / math.sqrt(n)


def _rows(records, family, variant, task, seed="any"):
    return [r for r in records if r["family"] == family and r["variant"] == variant and r["task"] == task
            and (seed == "any" or r["seed"] == seed)]


def mqar_cells(records, family, variant, seed="any") -> dict[tuple[int, int], float]:
    """(length, pairs) -> accuracy (with ``seed="any"`` the last seed's; pass a seed for one)."""
    return {(r["params"]["length"], r["params"]["pairs"]): r["value"]
            for r in _rows(records, family, variant, "mqar", seed)}


def heldout_loss(records, family, variant, seed="any") -> list[float]:
    return [r["value"] for r in _rows(records, family, variant, "ppl", seed)
            if r["metric"] == "loss" and r["setting"].endswith(" all")]


def seeds_of(records, family, variant) -> list:
    return sorted({r["seed"] for r in records if r["family"] == family and r["variant"] == variant},
                  key=lambda s: (s is not None, s))


def _needle_mean(records, family, variant, task, seed, beyond: int) -> float | None:
    values = [r["value"] for r in _rows(records, family, variant, task, seed) if r["params"].get("length", 0) > beyond]
    return sum(values) / len(values) if values else None


def verdicts(records: list[dict[str, Any]], rule, post_lens: dict[str, int] | None = None,
             baseline: str = "lpt", exclude: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """One verdict per (family, variant other than the baseline), by the rule in this module's docstring.
    ``rule``: a ``VerdictSpec``; ``post_lens``: family -> post-training context (for the needle gains);
    ``exclude``: models that are not post-trained variants (the from-scratch references)."""
    found = []
    for family in dict.fromkeys(r["family"] for r in records):
        variants = list(dict.fromkeys(r["variant"] for r in records if r["family"] == family))
        if baseline not in variants:
            continue
        base = mqar_cells(records, family, "base")
        past = sorted(cell for cell, accuracy in base.items() if accuracy < rule.capacity_threshold)
        for variant in (v for v in variants if v not in ("base", baseline, *exclude)):
            diffs, cells_better, cells_total, loss_v, loss_b, needles = [], 0, 0, [], [], {}
            for seed in seeds_of(records, family, variant):
                mine, theirs = mqar_cells(records, family, variant, seed), mqar_cells(records, family, baseline, seed)
                cells = [c for c in past if c in mine and c in theirs]
                if cells:
                    diffs.append(sum(mine[c] - theirs[c] for c in cells) / len(cells))
                    cells_better += sum(mine[c] > theirs[c] for c in cells)
                    cells_total += len(cells)
                a, b = heldout_loss(records, family, variant, seed), heldout_loss(records, family, baseline, seed)
                if a and b:
                    loss_v.append(a[0])
                    loss_b.append(b[0])
                for task in NEEDLE_TASKS:
                    beyond = (post_lens or {}).get(family, 0)
                    x, y = (_needle_mean(records, family, v, task, seed, beyond) for v in (variant, baseline))
                    if x is not None and y is not None:
                        needles.setdefault(task, []).append(x - y)
            mean, half = mean_ci(diffs)
            ratio = sum(loss_v) / sum(loss_b) if loss_b else float("nan")
            best = max([*base.values(), *(r["value"] for r in _rows(records, family, baseline, "mqar")),
                        *(r["value"] for r in _rows(records, family, variant, "mqar"))], default=0.0)
            recalls = best > rule.recall_floor
            interval_ok = len(diffs) < 2 or (not math.isnan(half) and mean - half > 0)
            loss_ok = math.isnan(ratio) or ratio <= 1 + rule.loss_tolerance
            beats = bool(diffs) and mean >= rule.min_gain and interval_ok and loss_ok
            found.append({
                "family": family, "variant": variant, "cells_past_capacity": len(past), "seeds": len(diffs),
                "gain": mean, "gain_ci": half, "gains": diffs, "seeds_better": sum(d > 0 for d in diffs),
                "cells_better": cells_better, "cells_compared": cells_total,
                "heldout_loss": sum(loss_v) / len(loss_v) if loss_v else float("nan"),
                "heldout_loss_lpt": sum(loss_b) / len(loss_b) if loss_b else float("nan"), "loss_ratio": ratio,
                "needle_gain": {task: sum(v) / len(v) for task, v in needles.items()}, "best_mqar": best,
                "beats_lpt": bool(recalls and beats),
                "verdict": "no cells" if not diffs else "yes" if recalls and beats else "no" if recalls
                else "no recall",
            })
    return found
