#!/usr/bin/env bash
# Every second: the group commit counters of both chat servers, summed, and
# how many redis-server processes run (2: one master and its replica; 6:
# three and three), so each second can be told to its side of an A/B run.
# Usage: poll-batches.sh [ports...] > log   (default 19001 19002)
ports=("${@:-19001 19002}")
[ $# -eq 0 ] && ports=(19001 19002)
while true; do
  t=$(date +%s.%N)
  nodes=$(pgrep -x redis-server | wc -l)
  line=$(for p in "${ports[@]}"; do curl -s -m 0.5 "http://127.0.0.1:$p/metrics"; done | awk '/^chat_server_append_batches_total/{b+=$2} /^chat_server_appends_batched_total/{n+=$2} /^chat_server_appends_alone_total/{a+=$2} END{print b+0, n+0, a+0}')
  echo "$t $nodes $line"
  sleep 1
done
