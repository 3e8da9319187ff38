#!/usr/bin/env bash
# INFO commandstats over 6 s of a fan-out at 3,000 msgs/s, group commit on and off.
cd /work/main
export BENCH_SKIP_BUILD=1 BENCH_API_PORT=18080 BENCH_CHAT_PORTS=19001,19002
for gc in true false; do
  log=/tmp/cmdstats-bench-$gc.log
  CHAT_REDIS_GROUP_COMMIT=$gc scripts/bench.sh cluster fanout --api http://127.0.0.1:18080 --connections 2000 --room-size 10 --rates 3000 --duration-s 14 --warmup-s 2 > $log 2>&1 &
  for i in $(seq 1 90); do sleep 1; grep -q "step 1\|rate 3000" $log && break; done
  sleep 5
  for p in 7100 7101 7102 7103 7104 7105; do redis-cli -p $p CONFIG RESETSTAT >/dev/null; done
  t0=$(date +%s.%N)
  sleep 6
  echo "=== group_commit=$gc window_s=$(echo "$(date +%s.%N) - $t0" | bc)"
  for p in 7100 7101 7102 7103 7104 7105; do
    role=$(redis-cli -p $p INFO replication | grep ^role: | tr -d '\r')
    echo "--- node $p $role"
    redis-cli -p $p INFO commandstats | tr -d '\r' | grep -E "cmdstat_(evalsha|wait|exec|multi|zadd|incr|set|hset|get|mget|replconf|ping|hgetall|pexpire|sadd|eval|cluster)\b|cmdstat_" | sed 's/,rejected_calls=0,failed_calls=0//' | head -30
  done
  wait
  grep RESULT $log | cut -c1-300
done
