#!/usr/bin/env bash
# A/B: group commit on (A) vs off (B), alternating, 3 each.
cd /work/main
export BENCH_SKIP_BUILD=1 BENCH_API_PORT=18080 BENCH_CHAT_PORTS=19001,19002
for i in 1 2 3; do
  for mode in on off; do
    if [[ $mode == on ]]; then export CHAT_REDIS_GROUP_COMMIT=true; else export CHAT_REDIS_GROUP_COMMIT=false; fi
    echo "=== run $i group_commit=$mode"
    scripts/bench.sh cluster fanout --api http://127.0.0.1:18080 --connections 2000 --room-size 10 --rates 3000,6000,9000 --duration-s 6 --warmup-s 2 2>&1 | grep '^RESULT ' | sed "s/^/$mode $i /"
  done
done
