"""What a larger state buys when trained from scratch, and how much of it post-training recovers.

A family with from-scratch references (``families.<f>.references``) has models at several state sizes trained
alike: the base (state S) and, e.g., the same model with 2S and 4S. The cells past the base's capacity are the
MQAR cells where the base scores below ``verdict.capacity_threshold``; every model's accuracy is averaged over
them. The largest reference R sets the gap: a post-trained variant's share of it is, per seed,

    share_s = (mean_past(variant_s) - mean_past(base)) / (mean_past(R) - mean_past(base))

(1: the variant does as well as R trained from scratch; 0: no better than the base it started from), reported as
the mean over seeds with its 95% interval. Undefined (nan) when R is no better than the base on those cells.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from statex.compare.verdicts import mean_ci, mqar_cells, seeds_of


def _mean_past(cells: dict, past: list) -> float | None:
    found = [cells[c] for c in past if c in cells]
    return sum(found) / len(found) if len(found) == len(past) and found else None


def _value(records, family, variant, task) -> float | None:
    return next((r["value"] for r in records if r["family"] == family and r["variant"] == variant
                 and r["task"] == task), None)


def reference_summary(records: list[dict[str, Any]], family: str, references: list[str], threshold: float,
                      trained_tokens: dict[str, int] | None = None) -> dict[str, Any] | None:
    """The family's models at their state sizes with their mean accuracy past the base's capacity, and each
    post-trained variant's share of the base-to-largest-reference gap; None without references or MQAR records.
    ``trained_tokens``: model -> tokens it was trained on in all (a post-trained variant: base + post-training)."""
    base = mqar_cells(records, family, "base")
    if not references or not base:
        return None
    past = sorted(cell for cell, accuracy in base.items() if accuracy < threshold)
    tokens = trained_tokens or {}
    models = list(dict.fromkeys(r["variant"] for r in records if r["family"] == family))
    points = []
    for model in models:
        scratch = model == "base" or model in references
        per_seed = [_mean_past(mqar_cells(records, family, model, seed), past)
                    for seed in seeds_of(records, family, model)]
        per_seed = [v for v in per_seed if v is not None]
        mean, half = mean_ci(per_seed)
        points.append({"model": model, "from_scratch": scratch, "state": _value(records, family, model, "state"),
                       "params": _value(records, family, model, "params"), "mean_past": mean, "ci_past": half,
                       "per_seed": per_seed, "tokens": tokens.get(model)})
    by_name = {p["model"]: p for p in points}
    scratch = [by_name[name] for name in references if name in by_name and by_name[name]["state"] is not None]
    target = max(scratch, key=lambda p: p["state"]) if scratch else None
    start = by_name["base"]["mean_past"]
    gap = target["mean_past"] - start if target is not None and past else float("nan")
    for p in points:
        shares = [(v - start) / gap for v in p["per_seed"]] if gap > 0 else []
        p["share"], p["share_ci"] = mean_ci(shares) if not p["from_scratch"] else (float("nan"), float("nan"))
        p["shares"] = shares if not p["from_scratch"] else []
    return {"family": family, "cells_past_capacity": past, "target": target["model"] if target else None,
            "gap": gap, "points": points}


def state_plot(summary: dict[str, Any], out: Path) -> Path | None:
    """Mean MQAR accuracy past the base's capacity against the recurrent state (elements, log scale): the
    from-scratch models joined by a line, each post-trained variant a point with its 95% interval over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [p for p in summary["points"] if p["state"] is not None and not math.isnan(p["mean_past"])]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    scratch = sorted((p for p in points if p["from_scratch"]), key=lambda p: p["state"])
    ax.plot([p["state"] for p in scratch], [p["mean_past"] for p in scratch], "k-o", label="from scratch")
    for p in scratch:
        ax.annotate(p["model"], (p["state"], p["mean_past"]), textcoords="offset points", xytext=(4, -12), fontsize=8)
    for p in (p for p in points if not p["from_scratch"]):
        half = 0.0 if math.isnan(p["ci_past"]) else p["ci_past"]
        ax.errorbar([p["state"]], [p["mean_past"]], yerr=[half], fmt="s", capsize=3, label=p["model"])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("recurrent state (elements, all layers)")
    ax.set_ylabel("MQAR accuracy past the base's capacity")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(f"{summary['family']}: {len(summary['cells_past_capacity'])} cells past the base's capacity",
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / f"{summary['family']}_state.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def reference_lines(summary: dict[str, Any]) -> list[str]:
    """The summary as a markdown table."""
    def fmt(mean, half=float("nan")):
        if mean != mean:
            return "-"
        return f"{mean:.3f}" if math.isnan(half) else f"{mean:.3f} ± {half:.3f}"

    target = summary["target"]
    lines = ["", f"State size: mean MQAR accuracy over the {len(summary['cells_past_capacity'])} cells past the base's "
             f"capacity, and each post-trained variant's share of the base-to-{target} gap "
             f"({fmt(summary['gap'])}), means ± 95% intervals over seeds:", "",
             "| model | trained | state elements | parameters | tokens trained | accuracy past capacity | share of the "
             "gap |", "|---|---|---|---|---|---|---|"]
    for p in summary["points"]:
        tokens = f"{p['tokens']:,}" if p["tokens"] else "-"
        lines.append(f"| {p['model']} | {'from scratch' if p['from_scratch'] else 'post-trained from base'} | "
                     f"{int(p['state'] or 0):,} | {int(p['params'] or 0):,} | {tokens} | "
                     f"{fmt(p['mean_past'], p['ci_past'])} | {fmt(p['share'], p['share_ci'])} |")
    return lines
