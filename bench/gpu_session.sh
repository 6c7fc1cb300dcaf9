#!/usr/bin/env bash
# One GPU session (prewarm, tests, benchmarks), each stage under its own time limit:
#   1. bench/triton_prewarm.py compiles every Triton kernel the next two steps use, on all CPU cores at once;
#   2. the CUDA tests (pytest -m cuda tests), their measured errors printed (-s);
#   3. bench/gpu_bench.py, case by case, each case in its own process with its part's time limit.
# Usage (from the repository root): OUT=out/gpu bash bench/gpu_session.sh
# Needs CUDA, torch with Triton, and flash-linear-attention importable (PYTHONPATH may point at src/).
# The cases and their kernel settings: bench/registry.py.
# Knobs (environment):
#   STAGES         stages to run, in the order given (default "prewarm tests bench")
#   WORKERS, PREWARM_PARTS, PREWARM_LIMIT          bench/triton_prewarm.py --workers / --parts / --limit
#   TEST_LIMIT, TEST_K                             seconds for the tests; pytest -k (also narrows their prewarm)
#   PARTS, ONLY, PART_TIMEOUTS, LENGTHS            bench/gpu_bench.py --parts / --only / --part-timeouts (per case)
#   TUNE_MS        bench/gpu_bench.py --tune-ms (default 5,25: short timing of autotuning candidates)
#   AUTOTUNE_TGZ   autotuning results of an earlier session (below)
# Autotuning results (Triton's *.autotune.json files, a few kB) are saved as $OUT/autotune.tgz; pass one back as
# AUTOTUNE_TGZ=path to a later session on the same kind of GPU and software: its kernels then compile only the chosen
# config and skip the timing of every candidate, so that session may leave out the prewarm stage.
set -u
cd "$(dirname "$0")/.."  # the benchmarks run as modules of the package bench
OUT=${OUT:-out/gpu}
STAGES=${STAGES-prewarm tests bench}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
stamp() { echo "[$(date +%T)] $*"; }
CACHE=${TRITON_CACHE_DIR:-$HOME/.triton/cache}
if [ -n "${AUTOTUNE_TGZ:-}" ]; then
    mkdir -p "$CACHE" && tar xzf "$AUTOTUNE_TGZ" -C "$CACHE" && stamp "autotune results restored from $AUTOTUNE_TGZ"
fi

prewarm() {
    python3 -m bench.triton_prewarm --workers "${WORKERS:-15}" --parts "${PREWARM_PARTS:-tests,layers,models}" \
        --limit "${PREWARM_LIMIT:-240}" --tests-k "${TEST_K:-}" --only "${ONLY:-}" --log-dir "$OUT/prewarm-logs" \
        2>&1 | tee "$OUT/prewarm.log" | tail -4
    # keep one worker's log (the others repeat it) beside the summary
    cp "$OUT/prewarm-logs/worker0.log" "$OUT/prewarm-worker0.log" 2>/dev/null; rm -rf "$OUT/prewarm-logs"
}
tests() {
    timeout "${TEST_LIMIT:-150}" python3 -m pytest -s -q -rA -p no:cacheprovider ${TEST_K:+-k "$TEST_K"} \
        -m cuda tests > "$OUT/gpu_tests.log" 2>&1
    stamp "tests rc=$?"
    grep -E "^(PASSED|FAILED|ERROR) |passed|failed" "$OUT/gpu_tests.log" | tail -40
}
bench() {
    python3 -m bench.gpu_bench --out "$OUT/bench" --parts "${PARTS:-peak,layers,model,decode}" --only "${ONLY:-}" \
        --lengths "${LENGTHS:-2048,8192,32768,65536}" \
        --part-timeouts "${PART_TIMEOUTS:-peak=30,layers=90,model=90,decode=60}" --tune-ms "${TUNE_MS-5,25}"
}
for stage in $STAGES; do
    case $stage in
        prewarm|tests|bench) stamp "$stage"; $stage ;;
        *) echo "gpu_session.sh: unknown stage '$stage' (prewarm, tests, bench)" >&2; exit 2 ;;
    esac
done
(cd "$CACHE" 2>/dev/null && find . -name '*.autotune.json' | tar czf "$OUT/autotune.tgz" -T -) \
    && stamp "autotune results saved: $OUT/autotune.tgz"
stamp "done"
