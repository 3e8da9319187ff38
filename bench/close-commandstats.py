#!/usr/bin/env python3
"""Redis `INFO commandstats` and CPU over the hold and close of a
`chat-bench connect` run (issue 13: what a session's close costs Redis).

Waits until the bench's log says the sessions are open, snapshots every
Redis node of the bench's cluster, then snapshots again every 0.2 s until
the nodes are gone (bench.sh stops them once chat-bench has printed its
result, after the servers went idle following the close), and prints the
difference per session: CPU of masters and replicas, and per command its
calls and the time Redis counted inside it.

Usage (the bench in the background, this in the foreground):
  (BENCH_API_PORT=18080 BENCH_CHAT_PORTS=19001,19002 scripts/bench.sh cluster \\
     connect --sessions 5000 --concurrency 100 --hold-s 2 --rooms-per-user 20 \\
     > /tmp/bench.log 2>&1 &)
  python3 bench/close-commandstats.py /tmp/bench.log --sessions 5000
"""

from __future__ import annotations

import argparse
import re
import subprocess
import time


def snapshot(ports: list[int]) -> dict | None:
    out = {}
    for port in ports:
        try:
            text = subprocess.run(["redis-cli", "-p", str(port), "info", "all"],
                                  capture_output=True, text=True, timeout=2).stdout
        except subprocess.TimeoutExpired:
            return None
        if not text:
            return None
        role = re.search(r"^role:(\w+)", text, re.M).group(1)
        commands = {m.group(1): (int(m.group(2)), int(m.group(3)))
                    for m in re.finditer(r"^cmdstat_(\S+):calls=(\d+),usec=(\d+)", text, re.M)}
        cpu = sum(float(x) for x in re.findall(r"^used_cpu_(?:sys|user):([\d.]+)", text, re.M))
        out[port] = ("master" if role == "master" else "replica", commands, cpu)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("log", help="the bench's output, growing")
    p.add_argument("--sessions", type=int, default=5000)
    p.add_argument("--base-port", type=int, default=7100, help="bench.sh's REDIS_CLUSTER_BASE_PORT")
    args = p.parse_args()
    ports = list(range(args.base_port, args.base_port + 6))
    while True:
        try:
            if "opened" in open(args.log).read():
                break
        except FileNotFoundError:
            pass
        time.sleep(0.1)
    first = snapshot(ports)
    last = first
    while (s := snapshot(ports)) is not None:
        last = s
        time.sleep(0.2)
    n = args.sessions
    cpu = {"master": 0.0, "replica": 0.0}
    totals: dict[tuple[str, str], list[int]] = {}
    for port, (role, commands, c) in last.items():
        _, before, c0 = first[port]
        cpu[role] += c - c0
        for name, (calls, usec) in commands.items():
            calls0, usec0 = before.get(name, (0, 0))
            t = totals.setdefault((role, name), [0, 0])
            t[0] += calls - calls0
            t[1] += usec - usec0
    print(f"from the sessions open (hold and close) until the cluster stopped, per session ({n}):")
    print(f"CPU µs: masters {cpu['master'] * 1e6 / n:.0f}, replicas {cpu['replica'] * 1e6 / n:.0f}")
    for (role, name), (calls, usec) in sorted(totals.items(), key=lambda x: -x[1][1]):
        if calls:
            print(f"{role:8} {name:20} calls {calls / n:7.2f}  µs {usec / n:7.1f}  µs/call {usec / calls:6.2f}")


if __name__ == "__main__":
    main()
