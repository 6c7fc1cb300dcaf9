"""The GPU preset's report: results.json, report.md with a verdict per (family, StateX mode), tables of every
task, tokens/s of every stage, and plots (passkey and NIAH heatmaps, MQAR curves, loss by position).

The rule (one seed, so no interval; the report says so): the MQAR cells past the base's capacity are those
where the base scores below ``capacity_threshold``; gain = mean over them of StateX minus LPT. StateX beats LPT
when the gain is at least ``min_gain`` and its held-out loss is within ``loss_tolerance`` of LPT's. When no
MQAR cell of the base, LPT or that StateX mode exceeds ``recall_floor``, the verdict is "no recall" (the models
learned no recall to compare: not a result for or against StateX). Passkey and NIAH are reported beside it, as
means over the cells longer than the post-training context (where LPT has not trained).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RECALL_TASKS = ("passkey", "niah_single_1", "niah_single_2")


def _rows(records, family, variant, task):
    return [r for r in records if r["family"] == family and r["variant"] == variant and r["task"] == task]


def _post_len(settings) -> int:
    return min(b.seq_len for b in settings.post.values())


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _mqar(records, family, variant) -> dict[tuple[int, int], float]:
    return {(r["params"]["length"], r["params"]["pairs"]): r["value"] for r in _rows(records, family, variant, "mqar")}


def _loss(records, family, variant) -> float:
    found = [r["value"] for r in _rows(records, family, variant, "ppl")
             if r["metric"] == "loss" and r["setting"].endswith(" all")]
    return found[0] if found else float("nan")


def _long_recall(records, family, variant, task, beyond: int) -> float:
    return _mean([r["value"] for r in _rows(records, family, variant, task) if r["params"]["length"] > beyond])


def verdicts(records: list[dict[str, Any]], settings) -> list[dict[str, Any]]:
    """One verdict per (family, StateX mode), by the rule in this module's docstring."""
    found = []
    for family in dict.fromkeys(r["family"] for r in records):
        variants = list(dict.fromkeys(r["variant"] for r in records if r["family"] == family))
        if "base" not in variants or "lpt" not in variants:
            continue
        base, lpt = _mqar(records, family, "base"), _mqar(records, family, "lpt")
        past = sorted(cell for cell, accuracy in base.items() if accuracy < settings.capacity_threshold)
        for variant in (v for v in variants if v.startswith("statex-")):
            statex = _mqar(records, family, variant)
            cells = [c for c in past if c in statex and c in lpt]
            gain = _mean([statex[c] - lpt[c] for c in cells])
            ratio = _loss(records, family, variant) / _loss(records, family, "lpt")
            best = max([*base.values(), *lpt.values(), *statex.values()], default=0.0)
            recalls = best > settings.recall_floor
            beats = bool(cells) and gain >= settings.min_gain and ratio <= 1 + settings.loss_tolerance
            found.append({
                "family": family, "variant": variant, "cells_past_capacity": len(cells), "gain": gain,
                "cells_better": sum(statex[c] > lpt[c] for c in cells), "loss_ratio": ratio,
                "recall_gain": {task: _long_recall(records, family, variant, task, _post_len(settings))
                                - _long_recall(records, family, "lpt", task, _post_len(settings))
                                for task in RECALL_TASKS},
                "best_mqar": best, "beats_lpt": recalls and beats,
                "verdict": "yes" if recalls and beats else "no" if recalls else "no recall",
            })
    return found


def _number(value: float, digits: int = 3) -> str:
    return "-" if value != value else f"{value:.{digits}f}"


def _passkey_lines(records, family: str, variants: list[str]) -> list[str]:
    """Passkey by length: the task (generation; mean over depths) / its answer tokens teacher-forced."""
    lengths = sorted({r["params"]["length"] for r in records if r["family"] == family and r["task"] == "passkey"})
    if not lengths:
        return []
    baselines = {r["params"]["baseline"] for r in records if r["family"] == family
                 and r["task"] == "passkey_forced" and "baseline" in r["params"]}
    baseline = (f" A model that knows the answer's format but has not read the needle predicts "
                f"{_number(max(baselines))} of the answer tokens teacher-forced (`passkey.format_baseline`)."
                if baselines else "")
    lines = ["", "Passkey by length: generated answers correct (mean over depths) / answer tokens predicted "
             "teacher-forced (depth 0.5; no generation)." + baseline, "",
             "| length | " + " | ".join(variants) + " |",
             "|---|" + "---|" * len(variants)]
    for length in lengths:
        cells = []
        for v in variants:
            generated, forced = (_mean([r["value"] for r in _rows(records, family, v, task)
                                        if r["params"]["length"] == length]) for task in ("passkey", "passkey_forced"))
            cells.append(f"{_number(generated)} / {_number(forced)}")
        lines.append(f"| {length} | " + " | ".join(cells) + " |")
    return lines + [""]


def _family_section(records, family: str, settings, timings: dict, plots: dict[str, Path]) -> list[str]:
    variants = list(dict.fromkeys(r["variant"] for r in records if r["family"] == family))
    beyond = _post_len(settings)
    pre, post = settings.pretrain[family], settings.post[family]
    lines = [f"## {family}", "", f"Model: {json.dumps(settings.models[family])}, vocabulary {settings.vocab_size}. "
             f"Pretraining: {pre.steps} steps of {pre.batch} x {pre.seq_len} tokens, lr {pre.lr:g}; post-training "
             f"(LPT and StateX alike): {post.steps} steps of {post.batch} x {post.seq_len}, lr {post.lr:g}. StateX expands layers `{settings.expand_layers[family]}` "
             f"({'to ' + str(settings.heads) + ' head(s)' if family == 'gla' else 'd_state x' + str(settings.factor)})."
             , "", "| variant | state elements | parameters | held-out loss | MQAR mean | "
             + " | ".join(f"{t} (T > {beyond})" for t in RECALL_TASKS) + " | train tokens/s | train min | eval min |",
             "|---|---|---|---|---|" + "---|" * len(RECALL_TASKS) + "---|---|---|"]
    for v in variants:
        count = {t: next((r["value"] for r in _rows(records, family, v, t)), float("nan")) for t in ("state", "params")}
        train = timings.get(f"{family}/{v}/train", {})
        evaluation = timings.get(f"{family}/{v}/eval", {})
        recall = [_number(_long_recall(records, family, v, t, beyond)) for t in RECALL_TASKS]
        lines.append(f"| {v} | {int(count['state']):,} | {int(count['params']):,} | {_number(_loss(records, family, v), 4)}"
                     f" | {_number(_mean(list(_mqar(records, family, v).values())))} | " + " | ".join(recall)
                     + f" | {train.get('tokens_per_s') or '-'} | {_number(train.get('seconds', float('nan')) / 60, 1)}"
                     f" | {_number(evaluation.get('seconds', float('nan')) / 60, 1)} |")
    base = _mqar(records, family, "base")
    per_cell = settings.mqar_n or settings.eval_n
    lines += ["", f"MQAR accuracy per cell ({per_cell} sequences each; * = past the base's capacity):", "",
              "| length | pairs | " + " | ".join(variants) + " |", "|---|---|" + "---|" * len(variants)]
    for cell in sorted(base):
        mark = "*" if base[cell] < settings.capacity_threshold else ""
        lines.append(f"| {cell[0]} | {cell[1]}{mark} | "
                     + " | ".join(_number(_mqar(records, family, v).get(cell, float("nan"))) for v in variants) + " |")
    lines.append("")
    lines += _passkey_lines(records, family, variants)
    lines += [f"![{family} {name}]({family}/{path.name})" for name, path in plots.items()] + [""]
    return lines


def write_gpu_report(out: Path, records: list[dict[str, Any]], settings, timings: dict, elapsed: float,
                     command: str) -> dict[str, Any]:
    """results.json, report.md and per-family plots under OUT/<family>/; returns {"records", "verdicts", "out"}."""
    from statex.eval.common import Record
    from statex.eval.report import make_plots
    from statex.files import write_atomic
    from statex.strict_json import dumps_strict

    write_atomic(out / "results.json", dumps_strict(records, indent=1) + "\n")
    found = verdicts(records, settings)
    lines = [f"# StateX vs LPT at GPU scale (--budget {settings.name})", "",
             f"Command: `{command}`; {elapsed / 60:.1f} minutes in this invocation. One seed ({settings.seed}): "
             "no interval, so a gain of the size of the cell-to-cell variation is no evidence.", "",
             "## Verdicts", "",
             f"Rule: the MQAR cells past the base's capacity are those where the base scores below "
             f"{settings.capacity_threshold}; gain = mean over them of StateX minus LPT. StateX beats LPT when the "
             f"gain is at least {settings.min_gain} and its held-out loss is within {settings.loss_tolerance:.0%} of "
             f"LPT's. \"no recall\": no MQAR cell of the base, LPT or that StateX mode above "
             f"{settings.recall_floor}, so the run compares nothing (the budget was too small for the models to "
             f"learn recall). Passkey and NIAH: mean over the cells longer than the post-training context "
             f"(T > {_post_len(settings)}), StateX minus LPT.", "",
             "| family | StateX mode | cells | MQAR gain | cells better | held-out loss StateX / LPT | "
             + " | ".join(f"{t} gain" for t in RECALL_TASKS) + " | beats LPT |",
             "|---|---|---|---|---|---|" + "---|" * len(RECALL_TASKS) + "---|"]
    for v in found:
        lines.append(f"| {v['family']} | {v['variant']} | {v['cells_past_capacity']} | {_number(v['gain'])} | "
                     f"{v['cells_better']} of {v['cells_past_capacity']} | {_number(v['loss_ratio'], 4)} | "
                     + " | ".join(_number(v["recall_gain"][t]) for t in RECALL_TASKS)
                     + f" | {v['verdict']} |")
    lines.append("")
    plots = {}
    for family in dict.fromkeys(r["family"] for r in records):
        rows = [Record(r["model"], r["task"], r["setting"], r["metric"], r["value"], r["n"], r["params"])
                for r in records if r["family"] == family and r["task"] not in ("state", "params")]
        (out / family).mkdir(parents=True, exist_ok=True)
        plots[family] = make_plots(rows, out / family)
        lines += _family_section(records, family, settings, timings, plots[family])
    lines += ["## Settings", "", "```json", json.dumps(settings.to_dict(), indent=1), "```", ""]
    write_atomic(out / "report.md", "\n".join(lines) + "\n")
    return {"records": records, "verdicts": found, "out": str(out),
            "plots": {f: {k: str(p) for k, p in v.items()} for f, v in plots.items()}}
