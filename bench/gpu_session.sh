#!/usr/bin/env bash
# One GPU session: the CUDA tests (in parallel: besides checking, they compile and autotune most of the Triton
# kernels the benchmark needs, on many CPU cores at once), then bench/gpu_benchmark parts one after another.
# Usage: OUT=out/gpu bash bench/gpu_session.sh   (needs CUDA, flash-linear-attention, pytest-xdist)
# TRITON_TGZ=path: a Triton cache saved by an earlier session (unpacked first; saves compile time).
set -u
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
if [ -n "${TRITON_TGZ:-}" ] && [ -f "$TRITON_TGZ" ]; then mkdir -p ~/.triton && tar xzf "$TRITON_TGZ" -C ~/.triton; fi
python3 - > "$OUT/warm_fla_layer.log" 2>&1 <<'PY' &
import torch
from fla.layers.gla import GatedLinearAttention
layer = GatedLinearAttention(mode="chunk", hidden_size=2048, expand_k=0.5, expand_v=1.0, num_heads=4,
                             norm_eps=1e-6).to("cuda", torch.bfloat16)
x = torch.randn(2, 2048, 2048, device="cuda", dtype=torch.bfloat16, requires_grad=True)
layer(x)[0].sum().backward()
print("fla layer warm")
PY
timeout "${TEST_LIMIT:-210}" python3 -m pytest -q -n "${WORKERS:-12}" -rA -p no:cacheprovider tests/test_gpu.py \
    > "$OUT/gpu_tests.log" 2>&1
echo "tests rc=$?"; grep -E "passed|failed|error" "$OUT/gpu_tests.log" | tail -3
wait
python3 bench/gpu_bench.py --out "$OUT/bench" --parts "${PARTS:-peak,layers,model,decode}" \
    --part-timeouts "${PART_TIMEOUTS:-layers=130,model=100,decode=80}"
tar czf "$OUT/triton.tgz" -C ~/.triton cache 2>/dev/null; ls -la "$OUT/triton.tgz"
