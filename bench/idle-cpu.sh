#!/usr/bin/env bash
# CPU of idle sessions: opens sessions with `chat-bench connect`, waits for
# the connects to end, then samples the chat servers' and all Redis nodes'
# CPU (utime + stime from /proc) over 30 s of the hold, when nothing is
# sent: what remains is the periodic work (health, catch-up, presence
# refresh, pings). Prints CPU ms per second for each group, then the bench's
# RSS per idle session (read at the end of the 45 s hold, after two presence
# refreshes).
#
# Usage: bench/idle-cpu.sh <bin dir> <rooms per user> <tag>
#   e.g. bench/idle-cpu.sh target/release 5 now
# Alternate two bin dirs (A B A B ...) to compare builds; the output of
# each run is in /tmp/idle-<tag>.txt.
set -euo pipefail
BIN="$(cd "$1" && pwd -P)"
ROOMS="$2"
TAG="$3"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
OUT="/tmp/idle-$TAG.txt"
cd "$REPO_ROOT"
BENCH_BIN_DIR="$BIN" BENCH_API_PORT=18080 BENCH_CHAT_PORTS=19001,19002 \
    scripts/bench.sh cluster connect --sessions 5000 --concurrency 100 --hold-s 45 \
    --rooms-per-user "$ROOMS" --room-size 10 >"$OUT" 2>&1 &
bench=$!
for _ in $(seq 1 90); do
    sleep 1
    grep -q "placement" "$OUT" 2>/dev/null && break
done
sleep 5
# Sum of utime + stime (clock ticks) of the processes matching $1.
ticks() {
    local total=0 p
    for p in $(pgrep -f "$1"); do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$total"
}
hz=$(getconf CLK_TCK)
chat0=$(ticks "$BIN/chat-server")
redis0=$(ticks redis-server)
sleep 30
chat1=$(ticks "$BIN/chat-server")
redis1=$(ticks redis-server)
echo "$TAG rooms=$ROOMS chat-servers idle CPU ms/s: $(((chat1 - chat0) * 1000 / hz / 30))" \
    " redis ms/s: $(((redis1 - redis0) * 1000 / hz / 30))"
wait "$bench"
grep -o '"rss_per_session_bytes":[0-9]*' "$OUT" || echo "no RESULT: see $OUT"
