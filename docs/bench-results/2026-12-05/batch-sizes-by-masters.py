#!/usr/bin/env python3
"""Appends per batch from poll-batches.sh's log (time, redis-server count,
batches, batched, alone; summed over both chat servers), per number of
Redis nodes (2: one master, 6: three) and band of append rate."""
import statistics
import sys

BANDS = [(1500, 2500), (3500, 4500)]
rows = [line.split() for line in open(sys.argv[1]) if len(line.split()) == 5]
seconds, prev = [], None
for r in rows:
    t, nodes, b, n, a = float(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4])
    if prev and b >= prev[2] and nodes == prev[1]:  # a new system starts from 0: skip that second
        dt, db, dn, da = t - prev[0], b - prev[2], n - prev[3], a - prev[4]
        if db and (dn + da) / dt > 500:
            seconds.append((nodes, (dn + da) / dt, (dn + da) / (db + da)))
    prev = (t, nodes, b, n, a)
for nodes in sorted({s[0] for s in seconds}):
    for lo, hi in BANDS:
        sel = [s for s in seconds if s[0] == nodes and lo <= s[1] < hi]
        if not sel:
            continue
        print(f"{nodes} redis nodes, appends/s {lo}-{hi}: {len(sel)} seconds, median rate "
              f"{statistics.median(s[1] for s in sel):.0f}, appends per write round trip median "
              f"{statistics.median(s[2] for s in sel):.2f} "
              f"(min {min(s[2] for s in sel):.2f}, max {max(s[2] for s in sel):.2f})")
