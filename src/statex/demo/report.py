"""The demo's report: means with 95% intervals over post-training seeds, one capacity plot per family, and a
verdict per StateX mode from a rule the report states.

The rule: the cells "past the base's capacity" are the MQAR cells where the base scores below
``settings.capacity_threshold``. For each seed s, d_s = mean over those cells of (StateX - LPT), both trained
from the same base with seed s (same data order). StateX reproduces the paper's direction when the mean of d_s
has a 95% interval above 0 and StateX's held-out loss is within ``settings.loss_tolerance`` of LPT's. The
report also counts the seeds with d_s > 0.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from statex.demo.settings import DemoSettings

# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (then the normal's)
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def mean_ci(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% t-interval); the half-width is nan for fewer than two values."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, (_T95[n - 2] if n - 1 <= len(_T95) else 1.96) * sd / math.sqrt(n)


def _cells(records, family, variant, seed="any") -> dict[tuple[int, int], float]:
    return {(r["params"]["length"], r["params"]["pairs"]): r["value"] for r in records
            if r["family"] == family and r["variant"] == variant and r["task"] == "mqar"
            and (seed == "any" or r["seed"] == seed)}


def _value(records, family, variant, task, seed):
    found = [r["value"] for r in records if r["family"] == family and r["variant"] == variant and r["task"] == task
             and r["seed"] == seed]
    return found[0] if found else None


def _seeds(records, family, variant) -> list[int]:
    return sorted({r["seed"] for r in records if r["family"] == family and r["variant"] == variant})


def verdicts(records: list[dict[str, Any]], settings: DemoSettings) -> list[dict[str, Any]]:
    """One verdict per (family, StateX mode), by the rule in this module's docstring."""
    found = []
    for family in dict.fromkeys(r["family"] for r in records):
        base = _cells(records, family, "base")
        past = sorted(cell for cell, acc in base.items() if acc < settings.capacity_threshold)
        modes = [v for v in dict.fromkeys(r["variant"] for r in records if r["family"] == family)
                 if v.startswith("statex-")]
        for variant in modes:
            diffs, loss_sx, loss_lpt = [], [], []
            for seed in _seeds(records, family, variant):
                sx, lpt = _cells(records, family, variant, seed), _cells(records, family, "lpt", seed)
                cells = [c for c in past if c in sx and c in lpt]
                if cells:
                    diffs.append(sum(sx[c] - lpt[c] for c in cells) / len(cells))
                a, b = (_value(records, family, v, "heldout_loss", seed) for v in (variant, "lpt"))
                if a is not None and b is not None:
                    loss_sx.append(a)
                    loss_lpt.append(b)
            mean, half = mean_ci(diffs) if diffs else (float("nan"), float("nan"))
            ratio = (sum(loss_sx) / sum(loss_lpt)) if loss_lpt else float("nan")
            interval_above = bool(diffs) and not math.isnan(half) and mean - half > 0
            found.append({
                "family": family, "variant": variant, "cells_past_capacity": len(past), "seeds": len(diffs),
                "gain": mean, "gain_ci": half, "seeds_better": sum(d > 0 for d in diffs), "gains": diffs,
                "heldout_loss": sum(loss_sx) / len(loss_sx) if loss_sx else float("nan"),
                "heldout_loss_lpt": sum(loss_lpt) / len(loss_lpt) if loss_lpt else float("nan"),
                "loss_ratio": ratio,
                "reproduced": bool(interval_above and ratio <= 1 + settings.loss_tolerance),
            })
    return found


def capacity_plot(records, family: str, settings: DemoSettings, out: Path) -> Path:
    """Accuracy vs pairs, one panel per evaluation length; base, LPT and each StateX mode (means over seeds with
    95% intervals)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(r["variant"] for r in records if r["family"] == family and r["task"] == "mqar"))
    lengths = sorted({r["params"]["length"] for r in records if r["family"] == family and r["task"] == "mqar"})
    fig, axes = plt.subplots(1, len(lengths), figsize=(5 * len(lengths), 3.8), squeeze=False, sharey=True)
    for ax, length in zip(axes[0], lengths):
        for variant in variants:
            pairs = sorted({p for (L, p) in _cells(records, family, variant) if L == length})
            means, lows, highs = [], [], []
            for p in pairs:
                values = [r["value"] for r in records if r["family"] == family and r["variant"] == variant
                          and r["task"] == "mqar" and r["params"] == {"length": length, "pairs": p}]
                m, h = mean_ci(values)
                h = 0.0 if math.isnan(h) else h
                means.append(m)
                lows.append(max(0.0, m - h))
                highs.append(min(1.0, m + h))
            style = "k--" if variant == "base" else "-o"
            line = ax.plot(pairs, means, style, label=variant, markersize=3)[0]
            if variant != "base":
                ax.fill_between(pairs, lows, highs, color=line.get_color(), alpha=0.2)
        ax.set_title(f"{family}: MQAR at length {length}", fontsize=10)
        ax.set_xlabel("key-value pairs")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (mean over seeds, 95% interval)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    path = out / f"{family}_capacity.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(mean: float, half: float, digits: int = 3) -> str:
    return f"{mean:.{digits}f}" if math.isnan(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def _family_section(records, family: str, settings: DemoSettings, base_record, plot: Path) -> list[str]:
    variants = list(dict.fromkeys(r["variant"] for r in records if r["family"] == family))
    lines = [f"## {family}", ""]
    if base_record:
        recipe = base_record["recipe"]
        lines += [f"Base: {base_record['params']:,} parameters, pretrained at T={recipe['seq_len']} for "
                  f"{recipe['steps']} steps ({base_record['tokens']:,} tokens, {base_record['wall_time_s'] / 60:.0f} "
                  f"min on {base_record['machine']['threads']} thread(s)); model {json.dumps(recipe['model'])}.", ""]
    fam = next((f for f in settings.families if f.family == family), None)
    if fam is not None:
        grow = f"{fam.heads} head(s)" if family == "gla" else f"d_state x{fam.factor}"
        lines += [f"Post-training: {fam.steps} steps ({fam.steps * settings.batch * settings.seq_len:,} tokens), "
                  f"{fam.mix['mqar']:.0%} MQAR with {fam.pairs[0]}-{fam.pairs[1]} pairs and "
                  f"{fam.mix['text']:.0%} template text, lr {fam.lr:g}; StateX expands "
                  f"layer(s) {fam.expand_layers} to {grow}. Evaluated at T={fam.base_seq_len} (the base's context) "
                  f"and T={settings.seq_len}.", ""]
    lines += ["| variant | seeds | state elements | parameters | held-out loss |", "|---|---|---|---|---|"]
    for v in variants:
        rows = [r for r in records if r["family"] == family and r["variant"] == v]
        state = next(r["value"] for r in rows if r["task"] == "state")
        params = next(r["value"] for r in rows if r["task"] == "params")
        m, h = mean_ci([r["value"] for r in rows if r["task"] == "heldout_loss"])
        seeds = len({r["seed"] for r in rows}) if v != "base" else "-"
        lines.append(f"| {v} | {seeds} | {int(state):,} | {int(params):,} | {_fmt(m, h, 4)} |")
    cells = sorted(_cells(records, family, "base"))
    lines += ["", f"MQAR accuracy per cell ({settings.eval_n} sequences each; mean ± 95% interval over seeds; "
              f"* = past the base's capacity):", "",
              "| length | pairs | " + " | ".join(variants) + " |", "|---|---|" + "---|" * len(variants)]
    base = _cells(records, family, "base")
    for (length, pairs) in cells:
        row = []
        for v in variants:
            values = [r["value"] for r in records if r["family"] == family and r["variant"] == v
                      and r["task"] == "mqar" and r["params"] == {"length": length, "pairs": pairs}]
            row.append(_fmt(*mean_ci(values)) if values else "")
        mark = "*" if base[(length, pairs)] < settings.capacity_threshold else ""
        lines.append(f"| {length} | {pairs}{mark} | " + " | ".join(row) + " |")
    lines += ["", f"![{family} capacity]({plot.name})", ""]
    return lines


def write_demo_report(out: Path, records: list[dict[str, Any]], settings: DemoSettings, elapsed: float,
                      command: str, base_records: dict[str, dict], bases: dict[str, str],
                      quick: bool = False) -> dict[str, Any]:
    """results.json, report.md and one capacity plot per family; returns {"records", "verdicts", "out"}."""
    from statex.files import write_atomic
    from statex.strict_json import dumps_strict

    write_atomic(out / "results.json", dumps_strict(records, indent=1) + "\n")
    found = verdicts(records, settings)
    lines = [f"# StateX vs LPT from pretrained miniature bases{' (--quick)' if quick else ''}", "",
             f"Command: `{command}`; {elapsed / 60:.1f} minutes. Bases: "
             + ", ".join(f"{f} `{b}`" for f, b in bases.items()) + ".", "",
             f"Within a family every variant is post-trained from the same base with the same budget, at "
             f"T={settings.seq_len} with batches of {settings.batch} sequences of MQAR and template text, "
             f"seeds 0-{settings.seeds - 1}; seed s gives LPT and StateX the same data order.", "",
             "## Verdicts", "",
             "Rule: the cells past the base's capacity are the MQAR cells where the base scores below "
             f"{settings.capacity_threshold}. Per seed, gain = mean over those cells of StateX minus LPT (same seed). "
             "StateX reproduces the paper's direction when the mean gain's 95% interval over seeds lies above 0 "
             f"and its held-out loss is within {settings.loss_tolerance:.0%} of LPT's.", "",
             "| family | StateX mode | cells | gain (mean ± 95%) | seeds with gain > 0 | held-out loss StateX / LPT "
             "| reproduced |", "|---|---|---|---|---|---|---|"]
    for v in found:
        lines.append(f"| {v['family']} | {v['variant']} | {v['cells_past_capacity']} | {_fmt(v['gain'], v['gain_ci'])}"
                     f" | {v['seeds_better']} of {v['seeds']} | {v['heldout_loss']:.4f} / {v['heldout_loss_lpt']:.4f}"
                     f" | {'yes' if v['reproduced'] else 'no'} |")
    if quick:
        lines += ["", "(--quick runs too few steps for these numbers to mean anything; it checks the pipeline.)"]
    lines.append("")
    plots = {}
    for family in dict.fromkeys(r["family"] for r in records):
        plots[family] = capacity_plot(records, family, settings, out)
        lines += _family_section(records, family, settings, base_records.get(family), plots[family])
    lines += ["## Settings", "", "```json", json.dumps(settings.to_dict(), indent=1), "```", ""]
    write_atomic(out / "report.md", "\n".join(lines) + "\n")
    return {"records": records, "verdicts": found, "out": str(out), "plots": {k: str(p) for k, p in plots.items()}}
