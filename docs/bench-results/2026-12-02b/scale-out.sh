#!/usr/bin/env bash
# Scale-out on one machine: the same offered load over 1, 2 and 4 chat
# servers (one API server, Redis Cluster 3+3), three rounds, the counts
# alternating within each round. On 2 cores more processes cannot add
# capacity; what this shows is whether the cost of a delivery grows as
# chat servers are added (cross-server routing, more connections to Redis).
cd "$(dirname "$0")/../../.."
export BENCH_SKIP_BUILD=1 BENCH_API_PORT=18080
out="${1:-docs/bench-results/2026-12-02b/scale-out.txt}"
: > "$out"
for round in 1 2 3; do
  for n in 1 2 4; do
    ports=$(seq -s, 19001 $((19000 + n)))
    echo "[scale-out] round $round: $n chat servers ($ports)" >&2
    BENCH_CHAT_PORTS=$ports scripts/bench.sh cluster fanout --api http://127.0.0.1:18080 \
      --connections 2000 --room-size 10 --rates 1500,3000 --duration-s 6 --warmup-s 2 2>&1 |
      grep '^RESULT ' | sed "s/^/servers=$n round=$round /" >> "$out"
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    head, _, js = line.partition("RESULT ")
    n = int(head.split()[0].split("=")[1])
    r = json.loads(js)
    rows.setdefault((r["rate"], n), []).append(r)
print("| offered msgs/s | chat servers | delivered/s | delivery p99 ms | app CPU µs/delivery | Redis CPU µs/delivery | lost | dup |")
print("|---|---|---|---|---|---|---|---|")
for (rate, n), rs in sorted(rows.items()):
    med = lambda f: statistics.median(f(r) for r in rs)
    print(f"| {rate:,.0f} | {n} | {med(lambda r: r['delivered_per_s']):,.0f} | "
          f"{med(lambda r: r['latency_us']['p99']) / 1000:.1f} | "
          f"{med(lambda r: r['app_cpu_us_per_delivery']):.1f} | {med(lambda r: r['redis_cpu_us_per_delivery']):.1f} | "
          f"{sum(r['lost'] for r in rs)} | {sum(r['duplicated'] for r in rs)} |")
PY
