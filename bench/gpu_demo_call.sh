#!/usr/bin/env bash
# One device call of the GPU demo preset (`statex demo --preset gpu`), continuing the run that earlier calls of
# the same lease left in RUN (stages are resumable), stopped with SIGTERM before the call's limit so that the
# training stage in progress writes a checkpoint; the results come back as one archive.
# Usage: OUT=$OUT CORPUS=corpus BUDGET=call LIMIT=540 bash bench/gpu_demo_call.sh
#   CORPUS  a directory made by `statex demo corpus` (build it where the registry is reachable and carry it)
#   RUN     the run's directory on the device (default /tmp/statex-gpu-demo: kept between calls of one lease)
#   BUDGET  lease | call | tiny (default call); LIMIT: seconds before SIGTERM (default 540)
#   FAMILIES  gla,mamba2 (default both)
#   PRETEST   a pytest -k expression for tests/test_gpu.py run first (e.g. "generation"), at most PRETEST_LIMIT
#             seconds (default 200), before the demo (whose LIMIT is its own); the log comes back as $OUT/gpu-tests.log
# Writes $OUT/gpu-demo.tgz (report.md, results.json, stages.json, settings.json, plots, each run's metrics.jsonl
# and train_config.json, and the log) and $OUT/gpu-demo.log.
set -u
OUT=${OUT:-out/gpu-demo-call}
RUN=${RUN:-/tmp/statex-gpu-demo}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
if [ -n "${PRETEST:-}" ]; then
    timeout "${PRETEST_LIMIT:-200}" python3 -m pytest -q -rs tests/test_gpu.py -k "$PRETEST" > "$OUT/gpu-tests.log" 2>&1
    echo "gpu tests (-k $PRETEST) rc=$?"; tail -3 "$OUT/gpu-tests.log"
fi
timeout -s TERM "${LIMIT:-540}" python3 -m statex demo --preset gpu --data "${CORPUS:-corpus}" --out "$RUN" \
    --budget "${BUDGET:-call}" ${FAMILIES:+--families "$FAMILIES"} --resume > "$OUT/gpu-demo.log" 2>&1
echo "statex demo rc=$?"
grep -E "^== |statex:|report written" "$OUT/gpu-demo.log" | tail -30
cp "$OUT/gpu-demo.log" "$RUN/gpu-demo-call.log" 2>/dev/null
(cd "$RUN" && find . \( -name '*.md' -o -name '*.json' -o -name '*.png' -o -name 'metrics.jsonl' \
    -o -name '*.log' \) -not -path '*/checkpoints/*' -not -path '*/final/*' -not -path './token-cache/*' \
    -not -name 'tokenizer.json' | tar czf "$OUT/gpu-demo.tgz" -T -) && ls -la "$OUT/gpu-demo.tgz"
