#!/usr/bin/env python3
"""Redis CPU and memory per append, for the append script as it is and as
it was at an earlier commit (issue 13).

Starts a scratch master and replica (`redis-server`, standalone, no
persistence) on free ports, makes ROOMS rooms the way the service does
(meta, 10 members, 10 indexed online sessions), then sends APPENDS appends
spread over the rooms through the real script (`EVALSHA`, pipelined by
`redis-cli --pipe`, every send with a client_msg_id), and reads the CPU
time of both processes from /proc before and after (the replica's after it
has caught up). Each variant runs on emptied servers; variants alternate
and repeat, and the medians are printed.

Variants:
  now       crates/chat-store/src/lua/append.lua (Stream history, dedup
            windows; online_index.lua prepended, as the store does), with
            the store's arguments, the caller holding the room's presence
            index at its current version (left out of the reply)
  sent      the same, the caller holding no index (sent with every reply,
            as before the index had versions)
  REV       the APPEND_LUA of crates/chat-store/src/redis_store.rs at git
            revision REV (sorted-set history, a dedup key per send)

Usage: bench/append-cost.py [--before REV] [--appends N] [--rooms R]
                            [--retention K] [--runs 3]
Pipelining everything at once is the best case for the network side; the
script's own cost, what differs between variants, is what this isolates.
No WAIT is sent (group commit makes it one per batch for either variant).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from scratch_redis import free_port, resp

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
DEDUP_TTL_MS = 86_400_000


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def cli(port: int, *args: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), *args],
                          capture_output=True, text=True, check=True).stdout


def info_field(port: int, section: str, name: str) -> str:
    for line in cli(port, "info", section).splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise KeyError(name)


def old_script(rev: str) -> str:
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:crates/chat-store/src/redis_store.rs"],
                         capture_output=True, text=True, check=True).stdout
    return re.search(r'const APPEND_LUA: &str = r#"(.*?)"#;', src, re.S).group(1)


def setup_rooms(rooms: int) -> bytes:
    out = []
    for r in range(rooms):
        tag = f"chat:{{room:r_{r:032x}}}"
        out.append(resp("HSET", f"{tag}:meta", "name", "bench", "created_by", "user-00000",
                        "created_at", "1", "joins", "1", "log", "0"))
        out.append(resp("SADD", f"{tag}:members", *[f"user-{u:05d}" for u in range(10)]))
        pairs = []
        for u in range(10):
            server = f"chat-{u % 2}"
            pairs += [f"s_{r:08d}{u:018d}", f"{len(server)}:{server}user-{u:05d}"]
        out.append(resp("HSET", f"{tag}:online", *pairs))
        out.append(resp("SET", f"{tag}:online:v", "v0"))
    return b"".join(out)


def appends(variant: str, sha: str, n: int, rooms: int, retention: int) -> bytes:
    # The real clock: dedup windows expire relative to Redis's.
    now_ms = int(time.time() * 1000)
    out = []
    for i in range(n):
        r = i % rooms
        room = f"r_{r:032x}"
        tag = f"chat:{{room:{room}}}"
        user = f"user-{i % 10:05d}"
        ulid = f"01JE{i:022d}"
        mid, cmid, body, ts = f"m_{ulid}", f"c_{ulid}", f"hello number {i}", str(now_ms + i)
        if variant in ("now", "sent") or variant.startswith("try"):
            window = int(ts) // DEDUP_TTL_MS
            held = ("", "0") if variant == "sent" else ("v0", "10")
            out.append(resp("EVALSHA", sha, "10", f"{tag}:meta", f"{tag}:members", f"{tag}:seq",
                            f"{tag}:log", f"{tag}:cmids:{window}", f"{tag}:cmids:{window - 1}",
                            f"{tag}:online", f"{tag}:reads", f"{tag}:msgs", f"{tag}:online:v",
                            user, cmid, mid, ts, body, str(retention), str(DEDUP_TTL_MS), "1",
                            f"{len(user)}:{user}{cmid}", str(window), ts, *held))
        else:
            prefix = ('{"body":"%s","client_msg_id":"%s","from":"%s","id":"%s","room":"%s","ts":%s,"seq":'
                      % (body, cmid, user, mid, room, ts))
            out.append(resp("EVALSHA", sha, "7", f"{tag}:meta", f"{tag}:members", f"{tag}:seq",
                            f"{tag}:msgs", f"{tag}:dedup:{user}:{cmid}", f"{tag}:online", f"{tag}:reads",
                            user, "1", prefix, str(retention), str(DEDUP_TTL_MS), "1", mid))
    return b"".join(out)


def run_once(master: int, replica: int, pids: tuple[int, int], variant: str, script: str,
             args: argparse.Namespace) -> tuple[float, float, float]:
    cli(master, "flushall")
    time.sleep(0.3)
    sha = cli(master, "script", "load", script).strip()
    subprocess.run(["redis-cli", "-p", str(master), "--pipe"], input=setup_rooms(args.rooms),
                   capture_output=True, check=True)
    time.sleep(0.3)
    mem0 = int(info_field(master, "memory", "used_memory"))
    before = (cpu_s(pids[0]), cpu_s(pids[1]))
    out = subprocess.run(["redis-cli", "-p", str(master), "--pipe"],
                         input=appends(variant, sha, args.appends, args.rooms, args.retention),
                         capture_output=True, check=True).stdout.decode()
    if "errors: 0" not in out:
        raise SystemExit(f"{variant}: script errors: {out}")
    offset = info_field(master, "replication", "master_repl_offset")
    for _ in range(200):
        if info_field(replica, "replication", "slave_repl_offset") == offset:
            break
        time.sleep(0.05)
    after = (cpu_s(pids[0]), cpu_s(pids[1]))
    mem = int(info_field(master, "memory", "used_memory")) - mem0
    per = lambda i: (after[i] - before[i]) * 1e6 / args.appends
    return per(0), per(1), mem / args.appends


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--before", default="fcf065c")
    p.add_argument("--appends", type=int, default=40_000)
    p.add_argument("--rooms", type=int, default=20)
    p.add_argument("--retention", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--try", dest="tries", action="append", default=[], metavar="FILE",
                   help="also run this variant of append.lua (same arguments as now)")
    args = p.parse_args()
    lua = ROOT / "crates/chat-store/src/lua"
    shared = (lua / "online_index.lua").read_text()
    now = shared + (lua / "append.lua").read_text()
    scripts = {"now": now, "sent": now, args.before: old_script(args.before)}
    for i, path in enumerate(args.tries):
        scripts[f"try{i + 1}"] = shared + Path(path).read_text()
    master, replica = free_port(), free_port()
    with tempfile.TemporaryDirectory() as d:
        common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", d]
        procs = [subprocess.Popen(["redis-server", "--port", str(master), *common],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
                 subprocess.Popen(["redis-server", "--port", str(replica), "--replicaof", "127.0.0.1",
                                   str(master), *common],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        try:
            for _ in range(100):
                try:
                    if info_field(replica, "replication", "master_link_status") == "up":
                        break
                except (subprocess.CalledProcessError, KeyError):
                    pass
                time.sleep(0.1)
            pids = (procs[0].pid, procs[1].pid)
            print(f"redis {info_field(master, 'server', 'redis_version')}, {args.appends} appends "
                  f"over {args.rooms} rooms, retention {args.retention}, {args.runs} runs each, alternating")
            results: dict[str, list[tuple[float, float, float]]] = {v: [] for v in scripts}
            for run in range(args.runs):
                for variant, script in scripts.items():
                    r = run_once(master, replica, pids, variant, script, args)
                    results[variant].append(r)
                    print(f"run {run + 1} {variant:>8}: master {r[0]:6.1f} µs  replica {r[1]:6.1f} µs  "
                          f"memory {r[2]:6.0f} B per append", flush=True)
            print(f"\n{'variant':>8} {'master µs':>10} {'replica µs':>11} {'total µs':>9} {'B/append':>9}  (medians)")
            for variant, rs in results.items():
                m = [statistics.median(x[i] for x in rs) for i in range(3)]
                print(f"{variant:>8} {m[0]:10.1f} {m[1]:11.1f} {m[0] + m[1]:9.1f} {m[2]:9.0f}")
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait()


if __name__ == "__main__":
    main()
