#!/usr/bin/env python3
"""What announcing a user in its rooms costs Redis: one script per room
(`ANNOUNCE_LUA`) against one script per master for k rooms
(`lua/announce_rooms.lua`), issue 13.

Starts a scratch `redis-server` in cluster mode serving every slot alone
(so scripts pay the cluster's per-command key checks, as in production),
makes rooms of 10 members with 9 online, then announces a user in
`--rooms` rooms both ways, pipelined (`redis-cli --pipe`), and reads the
server's CPU from /proc. Variants alternate, `--runs` times each; prints
medians of CPU µs per room announced.

Usage: python3 bench/announce-cost.py [--rooms 30000] [--runs 3] [--k 1,2,3,5,7,20]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from scratch_redis import free_port, resp

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "crates/chat-store/src/lua"
TICKS = 100


def scripts() -> tuple[str, str]:
    """The per-room and per-master announce scripts, as the store sends them."""
    store = (ROOT / "crates/chat-store/src/redis_store.rs").read_text()
    body = re.search(r'const ANNOUNCE_LUA: &str = concat!\(\s*include_str!\("lua/presence_audience.lua"\),\s*r#"(.*?)"#',
                     store, re.S).group(1)
    audience = (LUA / "presence_audience.lua").read_text()
    per_room = audience + body
    per_master = "#!lua flags=allow-cross-slot-keys\n" + audience + (LUA / "announce_rooms.lua").read_text()
    return per_room, per_master


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def cli(port: int, *args: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def pipe(port: int, payload: bytes) -> None:
    out = subprocess.run(["redis-cli", "-p", str(port), "--pipe"], input=payload,
                         capture_output=True, check=True).stdout.decode()
    errors = re.search(r"errors: (\d+)", out)
    if not errors or errors.group(1) != "0":
        raise SystemExit(f"redis-cli --pipe: {out}")


def keys(room: str) -> list[str]:
    return [f"chat:{{room:{room}}}:{part}" for part in ("members", "online", "seq", "online_version")]


def setup(rooms: int) -> bytes:
    out = []
    for r in range(rooms):
        members, online, seq, _ = keys(f"r{r}")
        out.append(resp("SADD", members, "u", *[f"m{i}" for i in range(9)]))
        for i in range(9):
            out.append(resp("HSET", online, f"s{r}-{i}", f"5:srv-am{i}"))
        out.append(resp("SET", seq, str(r % 100)))
    return b"".join(out)


def announces(k: int, rooms: int, sha_room: str, sha_master: str, tag: str) -> bytes:
    """Announces of user u in `rooms` rooms: per room (k = 0) or k per call."""
    out = []
    session = [f"s-{tag}", "5:srv-au"]
    if k == 0:
        for r in range(rooms):
            out.append(resp("EVALSHA", sha_room, "4", *keys(f"r{r}"), "u", f"v{tag}", "10", *session))
        return b"".join(out)
    for start in range(0, rooms, k):
        args = ["u", f"v{tag}", "10", "1", *session]
        for r in range(start, min(start + k, rooms)):
            args.extend(keys(f"r{r}"))
        out.append(resp("EVALSHA", sha_master, "0", *args))
    return b"".join(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rooms", type=int, default=30000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--k", default="1,2,3,5,7,20")
    args = parser.parse_args()
    ks = [0] + [int(k) for k in args.k.split(",")]
    per_room, per_master = scripts()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
                                 "--cluster-enabled", "yes", "--cluster-config-file", f"{tmp}/nodes.conf",
                                 "--dir", tmp], stdout=subprocess.DEVNULL)
        try:
            for _ in range(50):
                try:
                    cli(port, "ping")
                    break
                except subprocess.CalledProcessError:
                    time.sleep(0.1)
            cli(port, "cluster", "addslotsrange", "0", "16383")
            while "cluster_state:ok" not in cli(port, "cluster", "info"):
                time.sleep(0.1)
            sha_room = cli(port, "script", "load", per_room)
            sha_master = cli(port, "script", "load", per_master)
            pipe(port, setup(args.rooms))
            results: dict[int, list[float]] = {k: [] for k in ks}
            for run in range(args.runs):
                for k in ks:
                    payload = announces(k, args.rooms, sha_room, sha_master, f"{run}-{k}")
                    before = cpu_s(proc.pid)
                    pipe(port, payload)
                    results[k].append((cpu_s(proc.pid) - before) * 1e6 / args.rooms)
            print(f"# {args.rooms} rooms announced per run, medians of {args.runs}, CPU µs per room")
            base = statistics.median(results[0])
            for k in ks:
                med = statistics.median(results[k])
                label = "one script per room" if k == 0 else f"one script per {k} rooms"
                runs = ", ".join(f"{r:.1f}" for r in results[k])
                print(f"{label:28} {med:6.1f}  ({runs})  {med / base:.2f}x")
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
