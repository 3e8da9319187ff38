#!/usr/bin/env bash
# Soak: the local system under steady load and connection churn for a
# bounded time, sampling the server's resident memory; memory should stay
# flat once warm. Not part of CI (it runs for minutes).
#
# Usage: scripts/soak.sh [minutes, default 10] [messages/s, default 500]
# Output: target/soak/<timestamp>.csv (seconds, rss_kb) and a summary.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

minutes="${1:-10}"
rate="${2:-500}"
seconds=$((minutes * 60))
api_port="${SOAK_API_PORT:-18200}"
chat_ports="${SOAK_CHAT_PORTS:-19201,19202}"
out_dir="target/soak"
mkdir -p "$out_dir"
stamp="$(date +%Y%m%d-%H%M%S)"
csv="$out_dir/$stamp.csv"

[ "${SOAK_SKIP_BUILD:-0}" = 1 ] || cargo build --release --bin chat-local --bin chat-bench
ulimit -n 65536 2>/dev/null || true

# History is capped (as Redis trims it) so that what grows is not the
# in-memory store's retained messages but anything that leaks.
RUST_LOG=warn CHAT_HANDSHAKES_PER_IP_PER_S=0 CHAT_HISTORY_RETENTION="${SOAK_HISTORY_RETENTION:-200}" target/release/chat-local --api-port "$api_port" --chat-ports "$chat_ports" \
  >"$out_dir/$stamp.server.log" 2>&1 &
server=$!
pids=("$server")
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

api="http://127.0.0.1:$api_port"
for _ in $(seq 1 100); do
  curl -fsS "$api/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
sleep 1

# Steady load: 1,000 connections in rooms of 10, one sender per room.
target/release/chat-bench fanout --api "$api" --connections 1000 --room-size 10 \
  --rate "$rate" --duration-s "$seconds" --warmup-s 5 >"$out_dir/$stamp.fanout.txt" 2>&1 &
pids+=("$!")

# Churn: waves of 500 sessions that connect, idle 5 s and leave.
(
  end=$((SECONDS + seconds))
  while [ "$SECONDS" -lt "$end" ]; do
    target/release/chat-bench connect --api "$api" --sessions 500 --concurrency 50 --hold-s 5 >/dev/null 2>&1 || true
  done
) &
pids+=("$!")

echo "seconds,rss_kb" >"$csv"
start=$SECONDS
while [ $((SECONDS - start)) -lt "$seconds" ] && kill -0 "$server" 2>/dev/null; do
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$server/status")
  echo "$((SECONDS - start)),$rss" >>"$csv"
  sleep 10
done
wait "${pids[1]}" || true

first=$(sed -n '3p' "$csv" | cut -d, -f2)
last=$(tail -1 "$csv" | cut -d, -f2)
peak=$(tail -n +2 "$csv" | cut -d, -f2 | sort -n | tail -1)
echo "soak ${minutes} min at ${rate} msgs/s with churn: RSS after warm-up ${first} kB, at the end ${last} kB, peak ${peak} kB ($csv)"
grep '^RESULT ' "$out_dir/$stamp.fanout.txt" | tail -1 || true
