#!/usr/bin/env bash
# Compare two sides in one sitting: A B A B ..., each run a fresh system
# started by scripts/bench.sh, then medians and ratios (scripts/bench-summary.py).
# The machine is shared and noisy: only ratios from one sitting compare.
#
# Usage: scripts/bench-ab.sh [-n RUNS] SIDE_A SIDE_B -- SCENARIO [chat-bench args...]
#
#   SIDE      label=mode[,VAR=value...]: mode is bench.sh's (local, cluster,
#             socketio); the variables are set for that side's run only
#             (server flags through their environment fallbacks, or
#             BENCH_BIN_DIR for another build).
#   -n RUNS   runs per side (default 3)
#
# Examples:
#   # ours against the Socket.IO peer
#   scripts/bench-ab.sh ours=cluster peer=socketio -- fanout \
#     --connections 2000 --room-size 10 --rates 3000,6000 --duration-s 6 --warmup-s 2
#   # a server setting on and off
#   scripts/bench-ab.sh gc=cluster no-gc=cluster,CHAT_REDIS_GROUP_COMMIT=false -- fanout --rates 3000
#   # two builds (binaries copied aside first)
#   scripts/bench-ab.sh new=cluster old=cluster,BENCH_BIN_DIR=/tmp/old-bin -- connect --sessions 5000
#
# Every RESULT line goes to target/bench/ab-<timestamp>.txt, prefixed with
# its side and run; the summary (markdown) is printed at the end. Set
# BENCH_SKIP_BUILD=1 to use the target/release binaries as they are.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_ROOT="$(dirname "$SCRIPT_DIR")"
RUNS=3
if [[ "${1:-}" == "-n" ]]; then
    RUNS="$2"
    shift 2
fi
if [[ $# -lt 4 || "$3" != "--" ]]; then
    sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
SIDES=("$1" "$2")
shift 3
SCENARIO_ARGS=("$@")

OUT_DIR="$REPO_ROOT/target/bench"
mkdir -p "$OUT_DIR"
OUT="$OUT_DIR/ab-$(date -u +%Y%m%dT%H%M%SZ).txt"
{
    echo "# scripts/bench-ab.sh ${SIDES[*]} -- ${SCENARIO_ARGS[*]}"
    echo "# commit $(git -C "$REPO_ROOT" rev-parse --short HEAD), $RUNS runs per side, alternating"
} >"$OUT"

# Builds once (unless told not to) so that no run of side A pays for it.
if [[ -z "${BENCH_SKIP_BUILD:-}" ]]; then
    (cd "$REPO_ROOT" && cargo build --release --locked -p api-server -p chat-server -p chat-local -p chat-bench)
fi

run_side() {
    local side="$1" run="$2"
    local label="${side%%=*}" spec="${side#*=}"
    local mode="${spec%%,*}" vars=()
    if [[ "$spec" == *,* ]]; then
        IFS=',' read -r -a vars <<<"${spec#*,}"
    fi
    echo "[bench-ab] run $run of $RUNS: $label ($mode ${vars[*]:-})" >&2
    env BENCH_SKIP_BUILD=1 "${vars[@]}" "$SCRIPT_DIR/bench.sh" "$mode" "${SCENARIO_ARGS[@]}" 2>&1 |
        grep '^RESULT ' | sed "s/^/$label $run /" | tee -a "$OUT" >/dev/null || true
}

for run in $(seq 1 "$RUNS"); do
    for side in "${SIDES[@]}"; do
        run_side "$side" "$run"
    done
done

echo "[bench-ab] raw results: $OUT" >&2
python3 "$SCRIPT_DIR/bench-summary.py" "$OUT"
