"""The tables of bench/gpu_bench.py's results, with the issues' targets judged from the numbers (plain Python,
tested on made-up records in tests/test_bench_report.py)."""
from __future__ import annotations

OWN_SSD = "@own-ssd"  # a case name's suffix: Mamba2's SSD on statex's own Triton kernels (STATEX_SSD=triton)
WIDE_VALUES = "@wide-values"  # GLA sub-heads of up to 256 x 2048 (the merged head as 4 sub-heads, not 16)


def tables(results: list[dict]) -> str:
    peak = next((r["tflops"] for r in results if r.get("part") == "peak"), None)
    pct = (lambda t: f"{100 * t / peak:.1f}%") if peak else (lambda t: "-")
    lines = [f"bf16 matmul peak measured in this run: {peak:.0f} TFLOP/s" if peak else "no peak measured", ""]
    layer = [r for r in results if r.get("part") == "layers"]
    if layer:
        lines += markdown_table(["layer", "T", "batch", "fwd+bwd ms", "tokens/s", "peak GiB", "model TFLOP/s",
                                 "of peak"], layer, lambda r: [
            r["T"], r["batch"], f"{1000 * r['seconds']:.1f}", f"{r['tokens_per_s'] / 1e6:.2f} M",
            f"{r['peak_gib']:.1f}", f"{r['tflops']:.0f}", pct(r["tflops"])])
        lines.append("")
        lines += ratio_lines(layer, "statex-gla-statex", "statex-gla", target=2.0)
        lines += ratio_lines(layer, "statex-gla-statex" + WIDE_VALUES, "statex-gla", target=2.0)
        lines += ratio_lines(layer, "statex-mamba2-statex", "statex-mamba2")
        lines += ratio_lines(layer, "statex-gla", "fla-gla", what="statex / fla layer time", target=1.10)
        # the own SSD kernel's targets (docs/benchmarks.md): the Mamba2-1.3B layer <= 40 ms per 65K tokens, d_state 512 <= 1.6x it
        lines += per_65k_lines(layer, "statex-mamba2" + OWN_SSD, 40)
        lines += ratio_lines(layer, "statex-mamba2-statex" + OWN_SSD, "statex-mamba2" + OWN_SSD, target=1.6)
        lines += ratio_lines(layer, "statex-mamba2" + OWN_SSD, "statex-mamba2", what="own SSD / chunk_gla layer time")
    model = [r for r in results if r.get("part") == "model"]
    if model:
        lines += [""] + markdown_table(["model", "T", "batch", "step s", "tokens/s", "peak GiB", "model TFLOP/s",
                                        "of peak"], model, lambda r: [
            r["T"], r["batch"], f"{r['seconds']:.3f}", f"{r['tokens_per_s']:,.0f}", f"{r['peak_gib']:.1f}",
            f"{r['tflops']:.0f}", pct(r["tflops"])])
        by = {r["name"]: r for r in model if "error" not in r}
        for label, expanded, original in (("GLA-1.3B every:6", "gla:statex", "gla:original"),
                                          ("GLA-1.3B every:6, wide values", "gla:statex" + WIDE_VALUES,
                                           "gla:original"),
                                          ("Mamba2-1.3B every:8", "mamba2:statex", "mamba2:original"),
                                          ("Mamba2-1.3B every:8, own SSD", "mamba2:statex" + OWN_SSD,
                                           "mamba2:original" + OWN_SSD)):
            if expanded in by and original in by:
                share = by[expanded]["tokens_per_s"] / by[original]["tokens_per_s"]
                lines.append(f"\n{label} throughput = {100 * share:.1f}% of the unexpanded model's "
                             f"(target >= 85%: {'met' if share >= 0.85 else 'MISSED'})")
    decode = [r for r in results if r.get("part") == "decode"]
    if decode:
        lines += [""] + markdown_table(["decode", "batch", "CUDA graph", "ms per step", "tokens/s"], decode,
                                       lambda r: [r["batch"], "yes" if r.get("cuda_graph") else "no",
                                                  f"{1000 * r['seconds_per_step']:.2f}", f"{r['tokens_per_s']:,.0f}"])
    return "\n".join(lines) + "\n"


def markdown_table(columns: list[str], records: list[dict], cells) -> list[str]:
    """A table with one row per record: its name, then cells(record); a failed case shows its error instead."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in records:
        row = [r["error"]] + [""] * (len(columns) - 2) if "error" in r else cells(r)
        lines.append("| " + " | ".join(str(c) for c in [r["name"]] + row) + " |")
    return lines


def ratio_lines(layer: list[dict], num: str, den: str, what: str | None = None,
                target: float | None = None) -> list[str]:
    """num's layer time over den's at each T both have: as ``what`` alone, or with the ratio of their FLOPs; and
    against ``target`` (at most) when given."""
    a = {r["T"]: r for r in layer if r["name"] == num and "error" not in r}
    b = {r["T"]: r for r in layer if r["name"] == den and "error" not in r}
    out = []
    for length in sorted(set(a) & set(b)):
        time_ratio = a[length]["seconds"] / b[length]["seconds"]
        verdict = f" (target <= {target:.2f}: {'met' if time_ratio <= target else 'MISSED'})" if target else ""
        if what:
            out.append(f"- T={length}: {what} = {time_ratio:.2f}{verdict}")
        else:
            flop_ratio = a[length]["flops_per_token"] / b[length]["flops_per_token"]
            kernel_ratio = a[length]["kernel_flops_per_token"] / b[length]["kernel_flops_per_token"]
            out.append(f"- T={length}: {num} / {den}: time x{time_ratio:.2f}, layer FLOPs x{flop_ratio:.2f} "
                       f"(recurrence FLOPs x{kernel_ratio:.2f}){verdict}")
    return out


def per_65k_lines(layer: list[dict], name: str, target_ms: float) -> list[str]:
    """name's layer time per 65,536 tokens at each T, against a target (at most target_ms)."""
    out = []
    for r in sorted((r for r in layer if r["name"] == name and "error" not in r), key=lambda r: r["T"]):
        ms = 1000 * r["seconds"] * 65536 / (r["batch"] * r["T"])
        out.append(f"- T={r['T']}: {name} {ms:.1f} ms per 65,536 tokens (target <= {target_ms:.0f} ms: "
                   f"{'met' if ms <= target_ms else 'MISSED'})")
    return out
