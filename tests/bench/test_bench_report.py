"""The benchmarks' registry and reporting (bench/gpu_bench.py runs only on a GPU; its case list, tables and target
verdicts are plain Python and are checked here on made-up records)."""
import pytest

from bench import gpu_bench
from bench.registry import CASES, find, select


def layer(name, T, seconds, flops=100.0, kernel=10.0):
    return {"part": "layers", "name": name, "T": T, "batch": 1, "seconds": seconds, "tokens_per_s": T / seconds,
            "peak_gib": 1.0, "tflops": 1.0, "flops_per_token": flops, "kernel_flops_per_token": kernel}


def test_layer_and_model_targets_are_judged_from_the_numbers():
    records = [{"part": "peak", "tflops": 800.0},
               layer("statex-gla", 2048, 0.0105), layer("fla-gla", 2048, 0.010),
               layer("statex-gla", 8192, 0.012), layer("fla-gla", 8192, 0.010),
               layer("statex-gla-statex", 2048, 0.02, flops=120.0, kernel=40.0),
               {"part": "model", "name": "gla:original", "T": 2048, "batch": 8, "seconds": 1.0,
                "tokens_per_s": 1000.0, "peak_gib": 1.0, "tflops": 1.0},
               {"part": "model", "name": "gla:statex", "T": 2048, "batch": 8, "seconds": 1.2,
                "tokens_per_s": 840.0, "peak_gib": 1.0, "tflops": 1.0},
               {"part": "layers", "name": "statex-mamba2", "error": "timed out after 90 s"}]
    text = gpu_bench.tables(records)
    assert "T=2048: statex / fla layer time = 1.05 (target <= 1.10: met)" in text
    assert "T=8192: statex / fla layer time = 1.20 (target <= 1.10: MISSED)" in text
    assert "statex-gla-statex / statex-gla: time x1.90, layer FLOPs x1.20 (recurrence FLOPs x4.00)" in text
    assert "84.0% of the unexpanded model's (target >= 85%: MISSED)" in text
    assert "| statex-mamba2 | timed out after 90 s |" in text
    assert "0.1%" in text  # 1 TFLOP/s of an 800 TFLOP/s peak


def test_the_registry_selects_cases_by_part_and_name_and_holds_their_settings_as_fields():
    names = lambda cases: [(c.part, c.name) for c in cases]  # noqa: E731
    assert names(select(["peak", "model"]))[:3] == [("peak", "bf16-matmul"), ("model", "gla:original"),
                                                    ("model", "gla:statex")]
    assert ("model", "mamba2:statex@own-ssd") in names(select(["model"]))
    assert names(select(["layers", "decode"], ["fla-gla", "mamba2:statex"])) == [
        ("layers", "fla-gla"), ("decode", "mamba2:statex")]
    assert find("layers", "statex-mamba2-statex@own-ssd").settings == {"ssd_kernel": "triton",
                                                                       "chunk_max_value_block": 512}
    assert find("model", "gla:statex@wide-values").settings["chunk_max_value_block"] == 2048
    assert find("layers", "statex-mamba2").settings["ssd_kernel"] == "fla"  # as first measured
    assert len({(c.part, c.name) for c in CASES}) == len(CASES)
    with pytest.raises(ValueError, match="unknown case"):
        select(["layers"], ["statex-gla@own-sdd"])
    with pytest.raises(ValueError, match="unknown part"):
        select(["layer"])


def test_model_flops_count_the_expanded_recurrence():
    # GLA-1.3B layer: 4 heads of 256 x 512 -> one merged head of 1024 x 2048 has 4x the state work per token
    original = gpu_bench.kernel_flops_per_token(4, 256, 512)
    merged = gpu_bench.kernel_flops_per_token(1, 1024, 2048)
    assert original == 3 * 4 * (2 * 64 * 768 + 4 * 256 * 512)
    assert merged - 3 * 2 * 64 * 3072 == 4 * (original - 3 * 4 * 2 * 64 * 768)


def test_own_ssd_targets_are_judged_per_65k_tokens_and_against_the_original_layer():
    records = [layer("statex-mamba2@own-ssd", 2048, 0.035), layer("statex-mamba2@own-ssd", 65536, 0.045),
               layer("statex-mamba2-statex@own-ssd", 2048, 0.05, flops=123.0, kernel=40.0),
               layer("statex-mamba2", 2048, 0.09),
               {"part": "model", "name": "mamba2:original@own-ssd", "T": 2048, "batch": 8, "seconds": 1.0,
                "tokens_per_s": 1000.0, "peak_gib": 1.0, "tflops": 1.0},
               {"part": "model", "name": "mamba2:statex@own-ssd", "T": 2048, "batch": 8, "seconds": 1.1,
                "tokens_per_s": 900.0, "peak_gib": 1.0, "tflops": 1.0}]
    text = gpu_bench.tables(records)
    # batch 1 x 2048 tokens in 35 ms is 1,120 ms per 65,536 tokens; 65,536 tokens in 45 ms misses 40 ms
    assert "T=2048: statex-mamba2@own-ssd 1120.0 ms per 65,536 tokens (target <= 40 ms: MISSED)" in text
    assert "T=65536: statex-mamba2@own-ssd 45.0 ms per 65,536 tokens (target <= 40 ms: MISSED)" in text
    assert "time x1.43, layer FLOPs x1.23 (recurrence FLOPs x4.00) (target <= 1.60: met)" in text
    assert "T=2048: own SSD / chunk_gla layer time = 0.39" in text
    assert "Mamba2-1.3B every:8, own SSD throughput = 90.0% of the unexpanded model's (target >= 85%: met)" in text


def test_multi_gpu_tables_judge_exactness_and_scaling_from_the_numbers():
    from bench.multi_gpu_report import tables

    scale = [{"part": "scale", "model": "gla-1.3b", "seq_len": 16384, "world": n, "wrap": "ddp",
              "tokens_per_s": 1000.0 * n * (1.0 if n < 8 else eff), "peak_memory_gib": 40.0}
             for n, eff in ((1, 1), (2, 1), (8, 0.93))]
    scale += [{"part": "scale", "model": "mamba2-1.3b", "seq_len": 65536, "world": n, "wrap": "ddp",
               "tokens_per_s": 500.0 * n * (1.0 if n == 1 else 0.85)} for n in (1, 8)]
    scale.append({"part": "scale", "model": "gla-1.3b", "seq_len": 16384, "world": 8, "wrap": "fsdp2",
                  "tokens_per_s": 7000.0, "peak_memory_gib": 21.5})
    exact = [{"part": "exact", "model": "gla-1.3b", "world": 8, "wrap": w, "seq_len": 4096, "global_batch": 8,
              "steps": 50, "max_rel_diff": d, "bit_identical_steps": 3} for w, d in (("ddp", 0.002), ("fsdp2", 0.01))]
    text = tables(exact + scale + [{"part": "kill", "model": "gla-1.3b", "world": 8, "error": "no rank-1 worker"}])
    assert "| gla-1.3b | 8 | ddp | 4096 | 8 | 50 | 2.00e-03 | 3 of 50 | yes |" in text
    assert "| gla-1.3b | 8 | fsdp2 | 4096 | 8 | 50 | 1.00e-02 | 3 of 50 | **no** |" in text  # above 2^-7
    assert "| gla-1.3b | 16384 | 1,000 (100%) | 2,000 (100%) | 7,440 (93%) | 40.0 / 21.5 | yes |" in text
    assert "| mamba2-1.3b | 65536 | 500 (100%) | - | 3,400 (85%) | - / - | **no** |" in text
    assert "- kill gla-1.3b 8: no rank-1 worker" in text
