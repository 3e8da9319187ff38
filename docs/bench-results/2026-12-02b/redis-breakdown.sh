#!/usr/bin/env bash
# Where Redis's CPU goes during a fan-out at RATE msgs/s (default 5,000):
# INFO commandstats (time inside commands) against INFO cpu (all of each
# node's CPU) over the same 6 s window, for every node of the bench cluster.
# BENCH_BIN_DIR=<dir> runs another build (scripts/bench.sh).
cd "$(dirname "$0")/../../.."
RATE="${1:-5000}"
export BENCH_SKIP_BUILD=1 BENCH_API_PORT=18080 BENCH_CHAT_PORTS=19001,19002
log=/tmp/redis-breakdown-bench.log
scripts/bench.sh cluster fanout --api http://127.0.0.1:18080 --connections 2000 --room-size 10 --rates "$RATE" --duration-s 14 --warmup-s 2 > $log 2>&1 &
for i in $(seq 1 90); do sleep 1; grep -q "step 1" $log && break; done
sleep 5
cpu() { redis-cli -p "$1" INFO cpu | tr -d '\r' | awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {printf "%.3f", s}'; }
declare -A c0
for p in 7100 7101 7102 7103 7104 7105; do redis-cli -p $p CONFIG RESETSTAT >/dev/null; c0[$p]=$(cpu $p); done
sleep 6
echo "=== rate=$RATE window 6 s"
for p in 7100 7101 7102 7103 7104 7105; do
  role=$(redis-cli -p $p INFO replication | grep ^role: | tr -d '\r')
  echo "--- node $p $role cpu_s=$(echo "$(cpu $p) - ${c0[$p]}" | bc)"
  redis-cli -p $p INFO commandstats | tr -d '\r' | grep "^cmdstat_" | sed 's/,rejected_calls=0,failed_calls=0//'
done
wait
grep RESULT $log | cut -c1-400
