#!/usr/bin/env bash
# Ours (group commit on, the default) against the Socket.IO peer, alternating, 3 each.
cd /work/main
export BENCH_SKIP_BUILD=1 BENCH_API_PORT=18080 BENCH_CHAT_PORTS=19001,19002
for i in 1 2 3; do
  echo "=== run $i ours"
  scripts/bench.sh cluster fanout --api http://127.0.0.1:18080 --connections 2000 --room-size 10 --rates 3000,6000,9000 --duration-s 6 --warmup-s 2 2>&1 | grep '^RESULT ' | sed "s/^/ours $i /"
  echo "=== run $i peer"
  scripts/bench.sh socketio fanout --connections 2000 --room-size 10 --rates 3000,6000,9000 --duration-s 6 --warmup-s 2 2>&1 | grep '^RESULT ' | sed "s/^/peer $i /"
done
