#!/usr/bin/env bash
# How much of a connect storm's Redis CPU lands on the master that holds the
# registry's slot ({registry}: pending tickets, hosted-users sets, health),
# against the other masters and the replicas. A connect storm (5,000
# sessions, 100 at a time) against scripts/bench.sh cluster; each Redis
# node's CPU from /proc over the storm. Release builds in target/release.
cd "$(dirname "$0")/../../.."
OUT=/tmp/registry-storm.txt
(BENCH_SKIP_BUILD=1 BENCH_API_PORT=18080 BENCH_CHAT_PORTS=${BENCH_CHAT_PORTS:-19001,19002} timeout 300 scripts/bench.sh cluster connect --api http://127.0.0.1:18080 --sessions "${SESSIONS:-5000}" --concurrency 100 --hold-s 3 > $OUT 2>&1 &)
for i in $(seq 600); do grep -q "connect: run" $OUT 2>/dev/null && break; sleep 0.1; done
cpu() { # pid -> utime+stime ticks
  awk '{print $14 + $15}' /proc/$1/stat
}
declare -A before role
for p in 7100 7101 7102 7103 7104 7105; do
  pid=$(pgrep -f "redis-server .*:$p" | head -1)
  before[$p]=$(cpu $pid)
  role[$p]=$(redis-cli -p $p role | head -1)
done
for i in $(seq 600); do grep -q "opened " $OUT 2>/dev/null && break; sleep 0.05; done
declare -A after
for p in 7100 7101 7102 7103 7104 7105; do
  pid=$(pgrep -f "redis-server .*:$p" | head -1)
  after[$p]=$(cpu $pid)
done
slot=$(redis-cli -p 7100 cluster keyslot 'chat:{registry}:servers')
owner=$(redis-cli -p 7100 cluster slots | python3 -c "
import sys
lines=[l.strip() for l in sys.stdin]
# flat redis-cli output: start, end, host, port, id, (replica host, port, id)...
i=0
while i < len(lines):
    try:
        a,b=int(lines[i]),int(lines[i+1])
    except ValueError:
        i+=1; continue
    if a <= $slot <= b: print(lines[i+3]); break
    i+=2
")
opened=$(grep -oE "opened [0-9]+ of" $OUT | awk '{print $2}')
grep -E "opened|CPU µs" $OUT
echo "registry slot $slot is on the master at port $owner"
for p in 7100 7101 7102 7103 7104 7105; do
  us=$(( (after[$p] - before[$p]) * 10000 ))
  tag=""; [[ "$p" == "$owner" ]] && tag=" (registry)"
  echo "port $p ${role[$p]}$tag: $(( us / 1000 )) ms CPU, $(( us / opened )) µs per session opened"
done
sleep 8
