"""The comparison's outputs: results.json (one record per family, variant, seed, task, setting and metric),
report.md (the verdicts by the stated rule with means and 95% intervals over seeds, state and parameter counts,
per-cell tables, stage times, the resolved spec) and plots (a capacity curve per family; passkey and NIAH depth x
length heatmaps and loss by position where those tasks ran)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from statex.compare.references import reference_lines, reference_summary, state_plot
from statex.compare.verdicts import NEEDLE_TASKS, heldout_loss, mean_ci, mqar_cells, verdicts


def _fmt(mean: float, half: float = float("nan"), digits: int = 3) -> str:
    if mean != mean:
        return "-"
    return f"{mean:.{digits}f}" if math.isnan(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def _variants(records, family) -> list[str]:
    return list(dict.fromkeys(r["variant"] for r in records if r["family"] == family))


def _values(records, family, variant, task, **params) -> list[float]:
    return [r["value"] for r in records if r["family"] == family and r["variant"] == variant and r["task"] == task
            and all(r["params"].get(k) == v for k, v in params.items())]


def capacity_plot(records, family: str, out: Path) -> Path | None:
    """MQAR accuracy against pairs, one panel per length: the base (dashed), LPT and each StateX mode (means over
    seeds with their 95% intervals shaded)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in records if r["family"] == family and r["task"] == "mqar"]
    if not rows:
        return None
    lengths = sorted({r["params"]["length"] for r in rows})
    fig, axes = plt.subplots(1, len(lengths), figsize=(5 * len(lengths), 3.8), squeeze=False, sharey=True)
    for ax, length in zip(axes[0], lengths):
        for variant in _variants(rows, family):
            pairs = sorted({r["params"]["pairs"] for r in rows if r["variant"] == variant
                            and r["params"]["length"] == length})
            stats = [mean_ci(_values(rows, family, variant, "mqar", length=length, pairs=p)) for p in pairs]
            means = [m for m, _ in stats]
            halves = [0.0 if math.isnan(h) else h for _, h in stats]
            line = ax.plot(pairs, means, "k--" if variant == "base" else "-o", label=variant, markersize=3)[0]
            if variant != "base":
                ax.fill_between(pairs, [max(0.0, m - h) for m, h in zip(means, halves)],
                                [min(1.0, m + h) for m, h in zip(means, halves)], color=line.get_color(), alpha=0.2)
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


def _seed_means(records, family) -> list:
    """The family's passkey, NIAH and perplexity-by-position records averaged over seeds, one model per variant
    (the input of ``statex.eval.report.make_plots``)."""
    from statex.eval.common import Record

    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if r["family"] == family and (r["task"] in NEEDLE_TASKS or (r["task"] == "ppl" and "start" in r["params"])):
            key = (r["variant"], r["task"], r["setting"], r["metric"])
            groups.setdefault(key, []).append(r)
    return [Record(variant, task, setting, metric, sum(r["value"] for r in rows) / len(rows), rows[0]["n"],
                   rows[0]["params"]) for (variant, task, setting, metric), rows in groups.items()]


def _needle_lines(records, family: str, variants: list[str]) -> list[str]:
    lines = []
    for task in NEEDLE_TASKS:
        lengths = sorted({r["params"]["length"] for r in records if r["family"] == family and r["task"] == task})
        if not lengths:
            continue
        forced_task = "passkey_forced" if task == "passkey" else f"{task}_forced"
        forced = any(r["task"] == forced_task for r in records if r["family"] == family)
        lines += ["", f"{task} by length (mean over depths and seeds"
                  + ("; / the answer tokens predicted teacher-forced, depth 0.5" if forced else "") + "):", "",
                  "| length | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
        for length in lengths:
            cells = []
            for v in variants:
                text = _fmt(mean_ci(_values(records, family, v, task, length=length))[0])
                if forced:
                    text += " / " + _fmt(mean_ci(_values(records, family, v, forced_task, length=length))[0])
                cells.append(text)
            lines.append(f"| {length} | " + " | ".join(cells) + " |")
    return lines


def _layer_lines(records, family: str, variants: list[str]) -> list[str]:
    """The mqar_layers task per cell: MQAR accuracy with no state reset after the pairs, each layer's reset
    ("reset" / "only" that layer kept), and every layer's, per variant (means over seeds)."""
    rows = [r for r in records if r["family"] == family and r["task"] == "mqar_layers"]
    lines = []
    for length, pairs in sorted({(r["params"]["length"], r["params"]["pairs"]) for r in rows}):
        def cell(v, mode, layer=None):
            return _fmt(mean_ci(_values(rows, family, v, "mqar_layers", length=length, pairs=pairs, mode=mode,
                                        layer=layer))[0])

        layers = sorted({r["params"]["layer"] for r in rows if r["params"]["layer"] is not None})
        lines += ["", f"Which layers carry the pairs: MQAR at length {length} with {pairs} pairs, the state after the "
                  "pairs kept whole, with one layer's emptied / with only that layer's kept, and with every layer's "
                  "emptied (mean over seeds; statex eval's mqar_layers task):", "",
                  "| state after the pairs | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants),
                  "| kept whole | " + " | ".join(cell(v, "intact") for v in variants) + " |"]
        lines += [f"| layer {i} emptied / only kept | " + " | ".join(f"{cell(v, 'reset', i)} / {cell(v, 'only', i)}"
                                                                 for v in variants) + " |" for i in layers]
        lines.append("| all emptied | " + " | ".join(cell(v, "all") for v in variants) + " |")
    return lines


def _trained_tokens(plan, family: str, timings: dict[str, dict]) -> dict[str, int]:
    """Model -> tokens trained in all: a from-scratch model its pretraining, a post-trained variant its base's
    pretraining plus its own post-training (the mean over seeds)."""
    found, post = {}, {}
    for stage in plan.stages:
        tokens = (timings.get(stage.name) or {}).get("tokens")
        if stage.family != family or stage.train is None or not tokens:
            continue
        if stage.kind == "pretrain":  # every phase of it
            found[stage.variant] = found.get(stage.variant, 0) + tokens
        else:
            post.setdefault(stage.variant, []).append(tokens)
    for variant, values in post.items():
        found[variant] = found.get("base", 0) + round(sum(values) / len(values))
    return found


def _probe_lines(plan, family: str, timings: dict[str, dict]) -> list[str]:
    """Each pretraining stage's synthetic sources at its last evaluation (the trainer's probes): whether the
    pretrained models learned the recall they were taught."""
    rows = []
    for stage in plan.stages if plan is not None else []:
        probes = (timings.get(stage.name) or {}).get("probes") or {}
        if stage.family == family and stage.kind == "pretrain":
            rows += [f"| {stage.name} | {source} | {v['loss']:.3f} | {v['accuracy']:.3f} |" for source, v in probes.items()]
    if not rows:
        return []
    return ["", "Pretraining's synthetic sources at each stage's end (fresh sequences of each source alone; accuracy: "
            "the labelled tokens predicted exactly):", "", "| stage | source | loss | accuracy |", "|---|---|---|---|",
            *rows]


def _post_tokens(plan, family: str, timings: dict[str, dict], train) -> str:
    """'7,593,984-8,196,096 tokens as read' from the finished post-training stages; the most the budget can read
    (every sequence at full length) when none has finished."""
    read = sorted(t["tokens"] for s in plan.stages if s.family == family and s.kind == "train"
                  and (t := timings.get(s.name) or {}).get("tokens"))
    if not read:
        return f"at most {train.steps * train.batch_size * train.seq_len:,} tokens"
    span = f"{read[0]:,}" if read[0] == read[-1] else f"{read[0]:,}-{read[-1]:,}"
    return f"{span} tokens as read"


def machines_line(timings: dict[str, dict], device: str) -> str:
    """The machines the stages ran on, most stages first ('NVIDIA H100 80GB HBM3 (torch 2.11.0, ...)'); the
    device kind alone for stages recorded before machines were."""
    from collections import Counter

    from statex.runtime.machine import summary

    seen = Counter(summary(t["machine"]) for t in timings.values() if t and isinstance(t.get("machine"), dict))
    if not seen:
        return device
    names = [name for name, _ in seen.most_common()]
    return names[0] if len(names) == 1 else f"{names[0]}; some stages on {', '.join(names[1:])} (see Stages)"


def _family_section(records, family, plan, timings, plots, extra=()) -> list[str]:
    variants = _variants(records, family)
    fam = plan.families.get(family) if plan is not None else None
    lines = [f"## {family}", ""]
    if fam is not None:
        train = next((s.train for s in plan.stages if s.family == family and s.kind == "train"), None)
        base = plan.spec.families[family].base
        own = {v.label: v.train for v in plan.spec.families[family].variants}
        origin = f"`{base.path}`" if base.path else f"pretrained here ({plan.spec.families[family].base.model})"
        lines += [f"Base: {origin}, context {fam.context}. "
                  + (f"Post-training (every variant alike): {train.steps} steps of {train.batch_size} sequences of "
                     f"up to {train.seq_len} tokens ({_post_tokens(plan, family, timings, train)}), lr {train.lr:g} "
                     f"({train.schedule}), {train.precision}. " if train is not None else "")
                  + "Variants: " + "; ".join(
                      f"{label} " + (", ".join(f"{k} {v}" for k, v in exp.items() if k in (
                          "mode", "expand_layers", "heads" if fam.config.family == "gla" else "factor"))
                                     if exp else "(the base's shapes)")
                      + "".join(f", {k} {v}" for k, v in own.get(label, {}).items())
                      for label, exp in fam.expansions.items()) + ".", ""]
    lines += ["| variant | seeds | state elements | parameters | held-out loss | train tokens/s | train min | eval min |",
              "|---|---|---|---|---|---|---|---|"]
    for v in variants:
        state = _values(records, family, v, "state")
        params = _values(records, family, v, "params")
        seeds = {r["seed"] for r in records if r["family"] == family and r["variant"] == v}
        mine = {name: t for name, t in timings.items() if name.startswith(f"{family}/{v}/")}
        train_rows = [t for name, t in mine.items() if name.rsplit("/", 1)[1] == "train" or "/phase" in name]
        eval_rows = [t for name, t in mine.items() if name.endswith("/eval")]
        speeds = [t["tokens_per_s"] for t in train_rows if t.get("tokens_per_s")]
        speed = f"{round(sum(speeds) / len(speeds)):,}" if speeds else "-"
        runs = len(train_rows) if seeds - {None} else 1  # seeds: the mean run; a pretrained model: all its phases
        train_min = _fmt(sum(t["seconds"] for t in train_rows) / 60 / runs, digits=1) if train_rows else "-"
        eval_min = _fmt(sum(t["seconds"] for t in eval_rows) / 60 / len(eval_rows), digits=1) if eval_rows else "-"
        lines.append(f"| {v} | {'-' if seeds <= {None} else len(seeds)} | {int(state[0]) if state else 0:,} | "
                     f"{int(params[0]) if params else 0:,} | {_fmt(*mean_ci(heldout_loss(records, family, v)), 4)} | "
                     f"{speed} | {train_min} | {eval_min} |")
    lines += _probe_lines(plan, family, timings)
    base = mqar_cells(records, family, "base")
    if base:
        threshold = plan.spec.verdict.capacity_threshold if plan is not None else 0.9
        n = next(r["n"] for r in records if r["family"] == family and r["task"] == "mqar")
        lines += ["", f"MQAR accuracy per cell ({n} sequences each; mean ± 95% interval over seeds; * past the base's "
                  "capacity):", "", "| length | pairs | " + " | ".join(variants) + " |",
                  "|---|---|" + "---|" * len(variants)]
        for length, pairs in sorted(base):
            row = [_fmt(*mean_ci(_values(records, family, v, "mqar", length=length, pairs=pairs))) for v in variants]
            mark = "*" if base[(length, pairs)] < threshold else ""
            lines.append(f"| {length} | {pairs}{mark} | " + " | ".join(row) + " |")
    lines += list(extra)
    lines += _layer_lines(records, family, variants)
    lines += _needle_lines(records, family, variants)
    for key, path in plots.items():
        lines += ["", f"![{family} {key}]({path.relative_to(plan.out if plan else path.parent)})"]
    lines.append("")
    return lines


def write_report(out: Path, records: list[dict[str, Any]], plan, timings: dict[str, dict], elapsed: float,
                 command: str) -> dict[str, Any]:
    """results.json, report.md and the plots; returns {"records", "verdicts", "out", "plots"}."""
    from statex.eval.report import make_plots
    from statex.files import write_atomic
    from statex.strict_json import dumps_strict

    write_atomic(out / "results.json", dumps_strict(records, indent=1) + "\n")
    rule = plan.spec.verdict
    post_lens = {name: fam.post_len for name, fam in plan.families.items()}
    references = {name: list(fam.references) for name, fam in plan.families.items()}
    found = verdicts(records, rule, post_lens, exclude=tuple(r for refs in references.values() for r in refs))
    seeds = plan.spec.seed_list
    needles = [t for t in NEEDLE_TASKS if any(v["needle_gain"].get(t) is not None for v in found)]
    lines = [f"# {plan.spec.name}", "", f"Command: `{command}`; {elapsed / 60:.1f} minutes in this invocation, on "
             f"{machines_line(timings, plan.device)}. Seeds {', '.join(map(str, seeds))}: within a family every "
             "variant is post-trained from the same base with the same budget, and seed s gives every variant the "
             "same data order.", "",
             "## Verdicts", "",
             f"Rule: the cells past the base's capacity are the MQAR cells where the base scores below "
             f"{rule.capacity_threshold}. Per seed, gain = mean over those cells of the variant minus LPT (same seed). "
             f"A variant beats LPT when the mean gain is at least {rule.min_gain:g}"
             + (", its 95% interval over seeds lies above 0" if len(seeds) > 1 else
                " (one seed: no interval, so a gain the size of the cell-to-cell noise is no evidence)")
             + f" and its held-out loss is within {rule.loss_tolerance:.0%} of LPT's (when perplexity is evaluated). "
             f"\"no recall\": no MQAR cell of the base, LPT or the variant above {rule.recall_floor:g}."
             + (" Needle gains: mean over the cells longer than the post-training context, minus LPT's."
                if needles else ""), "",
             "| family | variant | cells | gain (mean ± 95%) | seeds with gain > 0 | cells better | held-out loss "
             "variant / LPT | " + "".join(f"{t} gain | " for t in needles) + "beats LPT |",
             "|---|---|---|---|---|---|---|" + "---|" * len(needles) + "---|"]
    for v in found:
        lines.append(f"| {v['family']} | {v['variant']} | {v['cells_past_capacity']} | {_fmt(v['gain'], v['gain_ci'])}"
                     f" | {v['seeds_better']} of {v['seeds']} | {v['cells_better']} of {v['cells_compared']} | "
                     f"{_fmt(v['heldout_loss'], digits=4)} / {_fmt(v['heldout_loss_lpt'], digits=4)} | "
                     + "".join(f"{_fmt(v['needle_gain'].get(t, float('nan')))} | " for t in needles)
                     + f"{v['verdict']} |")
    lines.append("")
    plots: dict[str, dict[str, Path]] = {}
    studies = {}
    for family in dict.fromkeys(r["family"] for r in records):
        plots[family] = {}
        capacity = capacity_plot(records, family, out)
        if capacity is not None:
            plots[family]["capacity"] = capacity
        study = reference_summary(records, family, references.get(family, []), rule.capacity_threshold,
                                  _trained_tokens(plan, family, timings))
        if study is not None:
            studies[family] = study
            state = state_plot(study, out)
            if state is not None:
                plots[family]["state"] = state
        means = _seed_means(records, family)
        if means:
            (out / family).mkdir(parents=True, exist_ok=True)
            plots[family].update(make_plots(means, out / family))
        lines += _family_section(records, family, plan, timings, plots[family],
                                 reference_lines(studies[family]) if family in studies else [])
    lines += _stage_lines(timings)
    lines += ["", "## Spec (resolved)", "", "```json", json.dumps(plan.spec.to_dict(), indent=1), "```", ""]
    write_atomic(out / "report.md", "\n".join(lines) + "\n")
    return {"records": records, "verdicts": found, "out": str(out), "references": studies,
            "plots": {f: {k: str(p) for k, p in v.items()} for f, v in plots.items()}}


def _stage_lines(timings: dict[str, dict]) -> list[str]:
    """The Stages table; a machine column only when the stages ran on more than one machine."""
    from statex.runtime.machine import summary

    where = {name: summary(t["machine"]) if isinstance(t.get("machine"), dict) else "-" for name, t in timings.items()}
    several = len(set(where.values()) - {"-"}) > 1
    lines = ["## Stages", "", "| stage | minutes | tokens | tokens/s |" + (" machine |" if several else ""),
             "|---|---|---|---|" + ("---|" if several else "")]
    for name, t in timings.items():
        speed = f"{round(t['tokens_per_s']):,}" if t.get("tokens_per_s") else "-"
        lines.append(f"| {name} | {t['seconds'] / 60:.2f} | {t.get('tokens', 0):,} | {speed} |"
                     + (f" {where[name]} |" if several else ""))
    return lines
