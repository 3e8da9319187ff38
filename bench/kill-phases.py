#!/usr/bin/env python3
"""Where the time goes between a chat server's SIGKILL and the last of its
users' offline events, per run of `chat-bench connect --kill-server`.

Usage: bench/kill-phases.py [--dead-after-ms 3000] target/bench/<stamp>.txt ...

Each run's output (`<stamp>.txt`, with its RESULT line) is read with the
servers' log beside it (`<stamp>.servers.log`, written with RUST_LOG=info so
that the reap's log line is there). All times in seconds from the kill:

  expiry   the killed server's health record expires (its last report, from
           the RESULT's `last_report_before_kill_ms`, plus the dead-after
           interval): no process can know of the death sooner
  reap     the first reap of its users starts .. the last one ends
  last     the last offline event reaches a member's session
  from report  the same, from the killed server's last health report
           (removes where in the report's second the kill fell: compare
           builds on this one)
  wait     reap start - expiry: the reapers' part of the detection
"""
import json
import re
import sys
from datetime import datetime
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def wall_ms(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000


def main(argv):
    dead_after = 3000
    if argv[:1] == ["--dead-after-ms"]:
        dead_after, argv = int(argv[1]), argv[2:]
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    print("| run | binaries | last report before kill | expiry | reap | wait | last event | from report | users taken (rooms) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in map(Path, argv):
        text = path.read_text()
        binaries = re.search(r"^# binaries from (\S+)", text, re.M)
        result = next((l for l in text.splitlines() if l.startswith("RESULT ")), None)
        killed = json.loads(result[len("RESULT "):]).get("killed") if result else None
        if not killed or killed.get("killed_at_ms") is None:
            print(f"| {path.stem} | no kill RESULT with killed_at_ms |")
            continue
        kill = killed["killed_at_ms"]
        since_report = killed.get("last_report_before_kill_ms")
        expiry = None if since_report is None else (dead_after - since_report) / 1000
        reaps = []
        log = path.with_suffix(".servers.log")
        for line in ANSI.sub("", log.read_text() if log.exists() else "").splitlines():
            if "reaped the sessions of a dead chat server" not in line:
                continue
            fields = dict(re.findall(r"(\w+)=(\d+)", line))
            if int(fields.get("taken", 0)) == 0:
                continue
            end = wall_ms(line.split()[0])
            reaps.append((end - int(fields["elapsed_ms"]), end, fields))
        last = killed["offline_delay_us"]["max"] / 1e6
        if reaps:
            start = min(r[0] for r in reaps)
            end = max(r[1] for r in reaps)
            reap = f"{(start - kill) / 1000:.2f} .. {(end - kill) / 1000:.2f}"
            wait = "" if expiry is None else f"{(start - kill) / 1000 - expiry:.2f}"
            taken = ", ".join(f"{r[2]['taken']} ({r[2]['rooms']})" for r in reaps)
        else:
            reap = wait = taken = "no reap line (RUST_LOG=info?)"
        print(
            f"| {path.stem} | {binaries.group(1) if binaries else ''} | "
            f"{'' if since_report is None else f'{since_report / 1000:.2f}'} | "
            f"{'' if expiry is None else f'{expiry:.2f}'} | {reap} | {wait} | {last:.2f} | "
            f"{'' if since_report is None else f'{last + since_report / 1000:.2f}'} | {taken} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
