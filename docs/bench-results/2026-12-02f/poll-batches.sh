#!/usr/bin/env bash
# Every second: the group commit counters of both chat servers, summed.
while true; do
  t=$(date +%s.%N)
  line=$(for p in 19001 19002; do curl -s -m 0.5 http://127.0.0.1:$p/metrics; done | awk '/^chat_server_append_batches_total/{b+=$2} /^chat_server_appends_batched_total/{n+=$2} /^chat_server_appends_alone_total/{a+=$2} END{print b+0, n+0, a+0}')
  echo "$t $line"
  sleep 1
done
