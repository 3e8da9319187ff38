#!/usr/bin/env python3
"""Appends per batch from poll-batches.sh's log (one line a second: time,
batches, batched, alone, summed over both chat servers), grouped by the
append rate of each second: 3,200, 6,500 and 8,000 msgs/s offered."""
import statistics
import sys

rows = [line.split() for line in open(sys.argv[1])]
seconds, prev = [], None
for r in rows:
    t, b, n, a = float(r[0]), int(r[1]), int(r[2]), int(r[3])
    if prev and b >= prev[1]:  # a new system starts from 0: skip that second
        dt, db, dn, da = t - prev[0], b - prev[1], n - prev[2], a - prev[3]
        if (dn + da) / dt > 500 and db:
            seconds.append(((dn + da) / dt, dn / db))
    prev = (t, b, n, a)
for lo, hi in [(2500, 3600), (5500, 7000), (7000, 9000)]:
    sel = [s for s in seconds if lo <= s[0] < hi]
    print(f"appends/s {lo}-{hi}: {len(sel)} seconds, median rate "
          f"{statistics.median(s[0] for s in sel):.0f}, appends per batch median "
          f"{statistics.median(s[1] for s in sel):.2f} "
          f"(min {min(s[1] for s in sel):.2f}, max {max(s[1] for s in sel):.2f})")
