"""The tables of bench/multi_gpu.py's results, with the multi-GPU targets of docs/training.md judged from the numbers (plain
Python, tested on made-up records in tests/test_bench_report.py)."""
from __future__ import annotations

BF16_TOLERANCE = 2.0 ** -7  # relative: one unit in the last place of bf16's 8-bit significand
SCALING_TARGET = 0.90  # DDP tokens/s at 8 GPUs over 8 x one GPU's


def tables(results: list[dict]) -> str:
    lines: list[str] = []
    failed = [r for r in results if "error" in r]
    exact = [r for r in results if r["part"] == "exact" and "error" not in r]
    if exact:
        lines += [f"Exactness: the same global batch and seed on 1 process and on N; relative loss difference, "
                  f"target within bf16 tolerance ({BF16_TOLERANCE:.4f}) at every step", "",
                  "| model | N | wrap | T | global batch | steps | max relative difference | bit-identical steps "
                  "| within tolerance |", "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['world']} | {r['wrap']} | {r['seq_len']} | {r['global_batch']} | "
                  f"{r['steps']} | {r['max_rel_diff']:.2e} | {r['bit_identical_steps']} of {r['steps']} | "
                  f"{_yes(r['max_rel_diff'] <= BF16_TOLERANCE)} |" for r in exact] + [""]
    resume = [r for r in results if r["part"] == "resume" and "error" not in r]
    if resume:
        lines += ["Resume across world sizes: a run checkpointed by N processes continued by M, against the "
                  "same run without the change", "",
                  "| model | first | then | switch at step | steps | max relative loss difference | weights max "
                  "abs difference | resumed from the checkpoint |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['first']} | {r['then']} | {r['switch_step']} | {r['steps']} | "
                  f"{r['max_rel_diff']:.2e} | {r['weights_max_abs_diff']:.2e} | {_yes(r['resumed_at_step'])} |"
                  for r in resume] + [""]
    kill = [r for r in results if r["part"] == "kill" and "error" not in r]
    if kill:
        lines += ["A rank killed with SIGKILL", "", "| model | N | exit code | newest complete checkpoint | "
                  "resumed | last steps logged |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['world']} | {r['exit_code']} | step {r['checkpoint_step']} | "
                  f"{_yes(r['resumed'])} | {r['last_steps']} |" for r in kill] + [""]
    lines += scaling_lines([r for r in results if r["part"] == "scale" and "error" not in r])
    if failed:
        lines += ["Failed runs:", ""] + [f"- {r['part']} {r.get('model', '')} "
                                         f"{r.get('world', '')}: {r['error']}" for r in failed] + [""]
    return "\n".join(lines)


def scaling_lines(scale: list[dict]) -> list[str]:
    if not scale:
        return []
    worlds = sorted({r["world"] for r in scale})
    lines = ["Scaling (batch 1 per GPU; efficiency = tokens/s at N / (N x tokens/s at 1), DDP; target at least "
             f"{SCALING_TARGET:.0%} at 8 GPUs) and the largest peak memory of any rank, DDP / FSDP2", "",
             "| model | T | " + " | ".join(f"{n} GPU tokens/s (eff.)" for n in worlds) + " | peak GiB per GPU, "
             "DDP / FSDP2 at the largest N | target |", "|---|---|" + "---|" * (len(worlds) + 2)]
    for model, seq_len in dict.fromkeys((r["model"], r["seq_len"]) for r in scale):
        rows = {(r["world"], r["wrap"]): r for r in scale if r["model"] == model and r["seq_len"] == seq_len}
        one = rows.get((1, "ddp"), {}).get("tokens_per_s")
        cells, efficiency = [], {}
        for n in worlds:
            row = rows.get((n, "ddp"))
            if row is None:
                cells.append("-")
                continue
            efficiency[n] = row["tokens_per_s"] / (n * one) if one else None
            cells.append(f"{row['tokens_per_s']:,.0f}" + (f" ({efficiency[n]:.0%})" if one else ""))
        top = max(worlds)
        memory = " / ".join(f"{rows[(top, w)]['peak_memory_gib']:.1f}" if "peak_memory_gib" in rows.get((top, w), {})
                            else "-" for w in ("ddp", "fsdp2"))
        verdict = "-" if efficiency.get(8) is None else _yes(efficiency[8] >= SCALING_TARGET)
        lines.append(f"| {model} | {seq_len} | " + " | ".join(cells) + f" | {memory} | {verdict} |")
    return lines + [""]


def _yes(flag: bool) -> str:
    return "yes" if flag else "**no**"
