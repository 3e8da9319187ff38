#!/usr/bin/env python3
"""Inclusive sample counts of our crates' and our libraries' functions in a
`perf script` dump recorded with --call-graph dwarf (every function counted
once per sample it is on the stack of), and the share of samples whose leaf
is malloc or free. Usage: perf script -i FILE | perf-inclusive.py"""
import collections
import re
import sys

OURS = re.compile(r"^(<)?(chat_|api_server|redis::|tokio_tungstenite|tungstenite|hyper::server|"
                  r"axum::routing|jsonwebtoken|serde_json::de)")
ALLOC = re.compile(r"^(malloc|_int_malloc|_int_free|cfree|malloc_consolidate|unlink_chunk|"
                   r"__libc_free|realloc|_int_realloc|free|__libc_calloc|_int_memalign)")
inclusive, total, in_alloc = collections.Counter(), 0, 0
for block in sys.stdin.read().split("\n\n"):
    lines = [l.strip() for l in block.strip().split("\n") if l.strip()]
    if len(lines) < 2:
        continue
    total += 1
    seen = set()
    for i, line in enumerate(lines[1:]):
        parts = line.split(None, 1)
        if len(parts) < 2:
            continue
        sym = re.sub(r"::\{\{closure\}\}|::h[0-9a-f]{16}|\+0x[0-9a-f]+$", "",
                     parts[1].rsplit(" (", 1)[0])[:120]
        if i == 0 and ALLOC.match(sym):
            in_alloc += 1
        if OURS.match(sym) and sym not in seen:
            inclusive[sym] += 1
            seen.add(sym)
print(f"samples {total}, leaf in malloc/free {in_alloc} ({100 * in_alloc / max(total, 1):.1f} %)")
for sym, n in inclusive.most_common(40):
    print(f"{100 * n / total:5.1f} %  {sym}")
