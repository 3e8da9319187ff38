#!/usr/bin/env bash
# A/B: glibc malloc (base) vs mimalloc (mi) in the API and chat servers; same chat-bench.
cd /work/main
export BENCH_API_PORT=18080 BENCH_CHAT_PORTS=19001,19002
for i in 1 2 3; do
  for side in mi base; do
    echo "=== run $i $side"
    BENCH_BIN_DIR=/work/bench-bin/$side scripts/bench.sh cluster fanout --api http://127.0.0.1:18080 --connections 2000 --room-size 10 --rates 3000,6000 --duration-s 6 --warmup-s 2 2>&1 | grep '^RESULT ' | sed "s/^/$side $i /"
  done
done
for side in mi base mi base; do
  echo "=== connect $side"
  BENCH_BIN_DIR=/work/bench-bin/$side scripts/bench.sh cluster connect --api http://127.0.0.1:18080 --sessions 5000 --concurrency 100 2>&1 | grep '^RESULT ' | sed "s/^/$side c /"
done
