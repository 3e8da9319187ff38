#!/usr/bin/env python3
"""Medians and ratios of an A/B sitting (scripts/bench-ab.sh).

Input: lines `<side> <run> RESULT {json}` as bench-ab.sh writes them (other
lines are ignored). Output: a markdown table per step (the fan-out's offered
rate, or the scenario for the others) with the median of each figure over
the runs of each side, then the ratio of the first side to the second.

Usage: scripts/bench-summary.py target/bench/ab-<timestamp>.txt
"""

import json
import statistics
import sys
from collections import OrderedDict

# (column, how to read it from a RESULT, lower is better)
FIGURES = [
    ("delivered/s", lambda r: r.get("delivered_per_s"), False),
    ("acked/s", lambda r: r.get("acked_per_s"), False),
    ("delivery p50 ms", lambda r: ms(r, "latency_us", "p50"), True),
    ("delivery p99 ms", lambda r: ms(r, "latency_us", "p99"), True),
    ("ack p99 ms", lambda r: ms(r, "ack_latency_us", "p99"), True),
    ("server CPU µs/delivery", lambda r: server_cpu(r), True),
    ("Redis CPU µs/delivery", lambda r: r.get("redis_cpu_us_per_delivery"), True),
    ("app kernel µs/delivery", lambda r: app_kernel_cpu(r), True),
    ("bench CPU µs/delivery", lambda r: r.get("bench_cpu_us_per_delivery"), True),
    ("sessions/s", lambda r: sessions_per_s(r), False),
    ("RSS B/idle session", lambda r: r.get("rss_per_session_bytes"), True),
    ("API CPU µs/session", lambda r: per_session(r, "api-server"), True),
    ("chat CPU µs/session", lambda r: per_session(r, "chat-server"), True),
    ("Redis CPU µs/session", lambda r: per_session(r, "redis-server"), True),
    ("bench CPU µs/session", lambda r: per_session(r, "chat-bench"), True),
    ("lost", lambda r: r.get("lost"), True),
    ("duplicated", lambda r: r.get("duplicated"), True),
]


def ms(result, key, quantile):
    value = (result.get(key) or {}).get(quantile)
    return None if value is None else value / 1000


def server_cpu(result):
    """App processes (ours, or the peer's Node servers) plus Redis."""
    app = result.get("app_cpu_us_per_delivery") or result.get("peer_cpu_us_per_delivery")
    if app is None:
        return None
    return app + (result.get("redis_cpu_us_per_delivery") or 0)


def app_kernel_cpu(result):
    """The app processes' CPU in the kernel (socket reads and writes)."""
    return result.get("app_kernel_cpu_us_per_delivery") or result.get(
        "peer_kernel_cpu_us_per_delivery"
    )


def per_session(result, process):
    """CPU µs per session opened (connect) of one kind of process."""
    return (result.get("cpu_us_per_session") or {}).get(process)


def sessions_per_s(result):
    if result.get("scenario") != "connect" or not result.get("elapsed_s"):
        return None
    return result["opened"] / result["elapsed_s"]


def read(path):
    """{step: {side: [result, ...]}}, sides in the order they first ran."""
    steps = OrderedDict()
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.split(" ", 3)
            if len(parts) < 4 or parts[2] != "RESULT":
                continue
            side, result = parts[0], json.loads(parts[3])
            step = result.get("rate") or result.get("scenario", "?")
            steps.setdefault(step, OrderedDict()).setdefault(side, []).append(result)
    return steps


def fmt(value):
    if value is None:
        return "-"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def summarize(steps):
    out = []
    for step, sides in steps.items():
        names = list(sides)
        columns = [
            (name, get, lower)
            for name, get, lower in FIGURES
            if any(get(r) is not None for rs in sides.values() for r in rs)
        ]
        title = f"offered {fmt(float(step))} msgs/s" if isinstance(step, (int, float)) else step
        out.append(f"### {title}\n")
        out.append("| side | runs | " + " | ".join(c[0] for c in columns) + " |")
        out.append("|---|---|" + "---|" * len(columns))
        medians = {}
        for side in names:
            results = sides[side]
            row = []
            for name, get, _ in columns:
                values = [v for v in (get(r) for r in results) if v is not None]
                median = statistics.median(values) if values else None
                medians[(side, name)] = median
                row.append(fmt(median))
            out.append(f"| {side} | {len(results)} | " + " | ".join(row) + " |")
        if len(names) == 2:
            a, b = names
            row = []
            for name, _, _ in columns:
                x, y = medians[(a, name)], medians[(b, name)]
                row.append(f"{x / y:.2f}x" if x is not None and y else "-")
            out.append(f"| {a} / {b} | | " + " | ".join(row) + " |")
        out.append("")
    return "\n".join(out)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    steps = read(sys.argv[1])
    if not steps:
        sys.exit(f"{sys.argv[1]}: no RESULT lines")
    print(summarize(steps))


if __name__ == "__main__":
    main()
