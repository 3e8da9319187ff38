#!/usr/bin/env python3
"""Redis memory per stored message, for the history layouts issue 13 weighs.

Starts a scratch `redis-server` (standalone, no persistence) on a free port,
stores N messages spread over R rooms in each layout, one layout at a time on
an empty server, and prints `used_memory` growth per message. Memory is
counted, not timed, so the figures do not depend on how busy the machine is.

Layouts:
  zset+dedup-key   what chat-store did until 2026-12-02: the message JSON
                   (seq included) in a sorted set scored by seq, plus, for a
                   send with a client_msg_id, a string key holding the same
                   JSON with a TTL (the dedup record).
  zset+dedup-seq-id  what it does now: the dedup key holds `<seq> <id>` (a
                   duplicate reads the message back from the sorted set).
  zset+dedup-seq   the dedup key holding only the seq.
  zset+dedup-hash  the sorted set, and the dedup records of a room in one
                   hash (client_msg_id -> seq), trimmed by the append rather
                   than by key expiry.
  stream+dedup-hash  a Redis Stream per room with the seq as entry id
                   (`<seq>-0`) and the JSON as its one field, plus the
                   per-room dedup hash.
  stream-slim+dedup-hash  the Stream holding the JSON without the fields
                   the key and entry id already give (room, seq).
  stream-fields+dedup-hash  the Stream holding each field as a stream
                   field (id, from, body, ts, client_msg_id): the field
                   names are stored once per listpack node, not per entry.
  zset, stream-fields  history alone, without dedup records (sends
                   without a client_msg_id).

Usage: bench/history-memory.py [messages] [rooms]   (default 24000 24)
Needs redis-server and redis-cli (scripts/redis-cluster.sh installs them).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time

from scratch_redis import free_port, resp

MESSAGES = int(sys.argv[1]) if len(sys.argv) > 1 else 24_000
ROOMS = int(sys.argv[2]) if len(sys.argv) > 2 else 24
DEDUP_TTL_MS = 86_400_000


def message(room: str, seq: int, i: int) -> dict:
    # Ids as the service makes them (26-character ULIDs after a prefix),
    # a short body, a client_msg_id as the clients send.
    ulid = f"01JE{i:022d}"
    return {
        "body": f"hello number {i}",
        "client_msg_id": f"c_{ulid}",
        "from": f"user-{i % 500:05d}",
        "id": f"m_{ulid}",
        "room": room,
        "ts": 1_764_633_600_000 + i,
        "seq": seq,
    }


def commands(layout: str) -> bytes:
    out = []
    for i in range(MESSAGES):
        r = i % ROOMS
        room = f"r_{r:032x}"
        seq = i // ROOMS + 1
        m = message(room, seq, i)
        js = json.dumps(m, separators=(",", ":"))
        tag = f"chat:{{room:{room}}}"
        cmid = m["client_msg_id"]
        if layout.startswith("zset"):
            out.append(resp("ZADD", f"{tag}:msgs", str(seq), js))
        elif layout == "stream+dedup-hash":
            out.append(resp("XADD", f"{tag}:msgs", f"{seq}-0", "m", js))
        elif layout.startswith("stream-fields"):
            out.append(resp("XADD", f"{tag}:msgs", f"{seq}-0", "id", m["id"], "from", m["from"],
                            "body", m["body"], "ts", str(m["ts"]), "cmid", cmid))
        else:
            slim = {k: v for k, v in m.items() if k not in ("room", "seq")}
            out.append(resp("XADD", f"{tag}:msgs", f"{seq}-0", "m",
                            json.dumps(slim, separators=(",", ":"))))
        dedup_key = f"{tag}:dedup:{m['from']}:{cmid}"
        if layout == "zset+dedup-key":
            out.append(resp("SET", dedup_key, js, "PX", str(DEDUP_TTL_MS)))
        elif layout == "zset+dedup-seq-id":
            out.append(resp("SET", dedup_key, f"{seq} {m['id']}", "PX", str(DEDUP_TTL_MS)))
        elif layout == "zset+dedup-seq":
            out.append(resp("SET", dedup_key, str(seq), "PX", str(DEDUP_TTL_MS)))
        elif "+" in layout:
            out.append(resp("HSET", f"{tag}:dedup", f"{m['from']}:{cmid}", str(seq)))
    return b"".join(out)


def used_memory(cli: list[str]) -> int:
    info = subprocess.run(cli + ["info", "memory"], capture_output=True, text=True, check=True).stdout
    return int(next(l.split(":")[1] for l in info.splitlines() if l.startswith("used_memory:")))


def main() -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        server = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", d],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cli = ["redis-cli", "-p", str(port)]
        try:
            for _ in range(100):
                if subprocess.run(cli + ["ping"], capture_output=True, text=True).stdout.strip() == "PONG":
                    break
                time.sleep(0.05)
            version = subprocess.run(cli + ["info", "server"], capture_output=True, text=True).stdout
            version = next(l.split(":")[1] for l in version.splitlines() if l.startswith("redis_version:"))
            sample = json.dumps(message("r_" + "0" * 32, 1, 1), separators=(",", ":"))
            print(f"redis {version}, {MESSAGES} messages in {ROOMS} rooms "
                  f"({MESSAGES // ROOMS} each), message JSON {len(sample)} bytes")
            print(f"{'layout':<24} {'bytes/message':>14}")
            for layout in ["zset+dedup-key", "zset+dedup-seq-id", "zset+dedup-seq", "zset+dedup-hash",
                           "stream+dedup-hash", "stream-slim+dedup-hash",
                           "stream-fields+dedup-hash", "zset", "stream-fields"]:
                subprocess.run(cli + ["flushall"], capture_output=True, check=True)
                time.sleep(0.2)
                before = used_memory(cli)
                subprocess.run(cli + ["--pipe"], input=commands(layout), capture_output=True, check=True)
                after = used_memory(cli)
                print(f"{layout:<24} {(after - before) / MESSAGES:>14.0f}")
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
