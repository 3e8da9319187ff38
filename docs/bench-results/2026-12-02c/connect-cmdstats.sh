#!/usr/bin/env bash
# Where a connect costs Redis: a connect storm (5,000 sessions, 100 at a time)
# against scripts/bench.sh cluster, with INFO commandstats of all six nodes
# reset when connecting starts and read when it ends; prints calls and
# microseconds per session opened. Release builds in target/release.
cd "$(dirname "$0")/../../.."
(BENCH_SKIP_BUILD=1 BENCH_API_PORT=18080 BENCH_CHAT_PORTS=19001,19002 timeout 300 scripts/bench.sh cluster connect --api http://127.0.0.1:18080 --sessions 5000 --concurrency 100 --hold-s 3 > /tmp/cc.txt 2>&1 &)
# wait until the bench is connecting: the setup line about tokens
for i in $(seq 200); do grep -q "connect: run" /tmp/cc.txt 2>/dev/null && break; sleep 0.1; done
for p in 7100 7101 7102 7103 7104 7105; do redis-cli -p $p config resetstat >/dev/null; done
for i in $(seq 300); do grep -q "opened " /tmp/cc.txt 2>/dev/null && break; sleep 0.05; done
for p in 7100 7101 7102 7103 7104 7105; do redis-cli -p $p info commandstats; done > /tmp/cmdstats.txt
sleep 8
grep -E "opened|CPU µs" /tmp/cc.txt
python3 - <<'PY'
import re,collections
calls=collections.Counter(); usec=collections.Counter()
for l in open('/tmp/cmdstats.txt'):
    m=re.match(r'cmdstat_(\S+):calls=(\d+),usec=(\d+)',l)
    if m: calls[m[1]]+=int(m[2]); usec[m[1]]+=int(m[3])
for k,_ in usec.most_common(25): print(f"{k:30s} calls/session {calls[k]/5000:6.2f}  usec/session {usec[k]/5000:7.1f}")
print("total usec/session", sum(usec.values())/5000)
PY
