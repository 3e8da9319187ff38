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
  text      the same script with the dedup field as the text
            `<len(from)>:<from><client_msg_id>` instead of its 16-byte
            digest (the layout before 2026-12-03)
  REV       the APPEND_LUA of crates/chat-store/src/redis_store.rs at git
            revision REV (sorted-set history, a dedup key per send)

  part:*    with --parts: the script as it is with one part taken out
            (part:no-readmark, part:no-dedup, part:no-online, part:no-member),
            only INCR and XADD in a script (part:bare), or an empty script
            with the same arguments (part:empty); made from append.lua by
            `part_variants`, which fails if append.lua no longer has the
            text it removes

  multi     with --batches: each batch's appends in ONE script call, the
            script as it is wrapped in a loop (`multi_script`: every key
            still declared), so a batch pays one script call and, on the
            replica, one MULTI/EXEC instead of one per append; what a
            group commit of K appends could save by sending them as one
            call per master

  floor     no script: one `XADD <log> MAXLEN K 0-* ...` with the same
            fields (Redis numbers the entries 0-1, 0-2, ...): the least a
            stored, sequenced message can cost, with no membership check,
            no dedup, no read marker and no presence index

Usage: bench/append-cost.py [--before REV] [--appends N] [--rooms R]
                            [--retention K] [--runs 3] [--batches 1,2,4]
                            [--variants now,text,...] [--client-ids]
Without --batches everything is pipelined at once (`redis-cli --pipe`), no
WAIT: the best case for the network side, isolating the script's own cost,
which is what differs between variants. With --batches the appends go as
the chat servers' group commit sends them: K appends and one `WAIT 1 1000`
in one write, the next batch once the WAIT has answered (one batch in
flight, as per master per process), so the per-batch cost (the round
trip, `REPLCONF GETACK` to the replica and its ack) is counted too. It
prints, per variant, a fit of "µs per append = a + F / K": a is what each
append costs, F what each batch costs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import socket
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
                        "created_at", "1", "joins", "1", "log", "0", "dg", "0"))
        out.append(resp("SADD", f"{tag}:members", *[f"user-{u:05d}" for u in range(10)]))
        pairs = []
        for u in range(10):
            server = f"chat-{u % 2}"
            pairs += [f"s_{r:08d}{u:018d}", f"{len(server)}:{server}user-{u:05d}"]
        out.append(resp("HSET", f"{tag}:online", *pairs))
        out.append(resp("SET", f"{tag}:online:v", "v0"))
    return b"".join(out)


def appends(variant: str, sha: str, n: int, rooms: int, retention: int, client_ids: bool = False) -> list[bytes]:
    # The real clock: dedup windows expire relative to Redis's.
    now_ms = int(time.time() * 1000)
    out = []
    for i in range(n):
        r = i % rooms
        room = f"r_{r:032x}"
        tag = f"chat:{{room:{room}}}"
        user = f"user-{i % 10:05d}"
        # --client-ids: 128 bits in hex, as the servers make message ids
        # and our clients client_msg_ids (34 characters, not 28).
        ulid = f"{i:032x}" if client_ids else f"01JE{i:022d}"
        mid, cmid, body, ts = f"m_{ulid}", f"c_{ulid}", f"hello number {i}", str(now_ms + i)
        if variant == "floor":
            out.append(resp("XADD", f"{tag}:log", "MAXLEN", str(retention), "0-*", "i", mid,
                            "f", user, "t", ts, "b", body, "c", cmid))
        elif variant in ("now", "sent", "text", "multi") or variant.startswith(("try", "part:")):
            window = int(ts) // DEDUP_TTL_MS
            held = ("", "0") if variant == "sent" else ("v0", "10")
            text = f"{len(user)}:{user}{cmid}"
            field = text.encode() if variant == "text" else hashlib.sha256(text.encode()).digest()[:16]
            keys = [f"{tag}:meta", f"{tag}:members", f"{tag}:seq",
                    f"{tag}:log", f"{tag}:cmids:{window}", f"{tag}:cmids:{window - 1}",
                    f"{tag}:online", f"{tag}:reads", f"{tag}:msgs", f"{tag}:online:v"]
            argv = [user, cmid, mid, ts, body, str(retention), str(DEDUP_TTL_MS), "1",
                    field, str(window), ts, *held]
            if variant == "multi":
                out.append((keys, argv))
            else:
                out.append(resp("EVALSHA", sha, "10", *keys, *argv))
        else:
            prefix = ('{"body":"%s","client_msg_id":"%s","from":"%s","id":"%s","room":"%s","ts":%s,"seq":'
                      % (body, cmid, user, mid, room, ts))
            out.append(resp("EVALSHA", sha, "7", f"{tag}:meta", f"{tag}:members", f"{tag}:seq",
                            f"{tag}:msgs", f"{tag}:dedup:{user}:{cmid}", f"{tag}:online", f"{tag}:reads",
                            user, "1", prefix, str(retention), str(DEDUP_TTL_MS), "1", mid))
    return out


def read_reply(f) -> object:
    """One RESP reply from a buffered socket file."""
    line = f.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [read_reply(f) for _ in range(n)]
    raise RuntimeError(f"unexpected reply {line!r}")


def check(variant: str, reply: object) -> None:
    """The append script must have stored the message (status `N:<seq>`):
    a refusal (`E:notmember`, ...) costs less and would flatter it."""
    if variant == "multi":
        for one in reply:
            check("now", one)
        return
    if variant in ("now", "sent") and not (isinstance(reply, list) and reply[0].startswith(b"N:")):
        raise SystemExit(f"{variant}: the script did not store the message: {reply!r}")


def multi_script(append: str) -> str:
    """append.lua as a function, called for each append of a batch: KEYS
    are the appends' keys in turn (10 each), ARGV their count then their
    arguments in turn (13 each)."""
    return ("local function append_one(KEYS, ARGV)\n" + append + "\nend\n"
            "local out, k, a = {}, 0, 2\n"
            "for m = 1, tonumber(ARGV[1]) do\n"
            "  out[m] = append_one({unpack(KEYS, k + 1, k + 10)}, {unpack(ARGV, a, a + 12)})\n"
            "  k, a = k + 10, a + 13\n"
            "end\n"
            "return out\n")


def multi_batches(sha: str, pairs: list, batch: int) -> list[bytes]:
    out = []
    for start in range(0, len(pairs), batch):
        chunk = pairs[start:start + batch]
        keys = [k for ks, _ in chunk for k in ks]
        argv = [a for _, args in chunk for a in args]
        out.append(resp("EVALSHA", sha, str(len(keys)), *keys, str(len(chunk)), *argv))
    return out


def send_in_batches(master: int, variant: str, commands: list[bytes], batch: int) -> None:
    """Each batch and its WAIT in one write; the next once the WAIT answered."""
    wait = resp("WAIT", "1", "1000")
    with socket.create_connection(("127.0.0.1", master)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        replies = sock.makefile("rb")
        for start in range(0, len(commands), batch):
            chunk = commands[start:start + batch]
            sock.sendall(b"".join(chunk) + wait)
            for _ in chunk:
                check(variant, read_reply(replies))
            if read_reply(replies) != 1:
                raise SystemExit("WAIT: the replica did not acknowledge")


def run_once(master: int, replica: int, pids: tuple[int, int], variant: str, script: str,
             args: argparse.Namespace, batch: int | None = None) -> tuple[float, float, float]:
    cli(master, "flushall")
    time.sleep(0.3)
    sha = cli(master, "script", "load", script).strip() if script else ""
    subprocess.run(["redis-cli", "-p", str(master), "--pipe"], input=setup_rooms(args.rooms),
                   capture_output=True, check=True)
    time.sleep(0.3)
    mem0 = int(info_field(master, "memory", "used_memory"))
    commands = appends(variant, sha, args.appends, args.rooms, args.retention, args.client_ids)
    if variant == "multi":
        commands = multi_batches(sha, commands, batch)
    before = (cpu_s(pids[0]), cpu_s(pids[1]))
    if batch:
        # A multi call is a whole batch.
        send_in_batches(master, variant, commands, 1 if variant == "multi" else batch)
    else:
        out = subprocess.run(["redis-cli", "-p", str(master), "--pipe"], input=b"".join(commands),
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


def part_variants(append: str) -> dict[str, str]:
    """append.lua with one part taken out at a time, and the bare and empty
    scripts: what each part of an append costs (docs/benchmarks.md, "What
    each part of the append script costs")."""
    def without(text: str, *cuts: tuple[str, str]) -> str:
        for old, new in cuts:
            if old not in text:
                raise SystemExit(f"--parts: append.lua no longer has {old!r}")
            text = text.replace(old, new)
        return text
    return {
        "part:no-readmark": without(
            append, ("if ARGV[8] == '1' then redis.call('HSET', KEYS[8], ARGV[1], seq) end\n", "")),
        "part:no-dedup": without(
            append, ("if ARGV[2] ~= '' then\n  local prev", "if false then\n  local prev"),
            ("if ARGV[2] ~= '' then remember(seq .. ' ' .. ARGV[3]) end\n", "")),
        "part:no-online": without(
            append, ("  local index, version, held = online_index(KEYS[7], KEYS[10], ARGV[12], ARGV[13])\n"
                     "  return {status, index, version, held}", "  return {status, {}, '', '0'}")),
        "part:no-member": without(
            append, ("if ARGV[8] == '1' and redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then "
                     "return {'E:notmember', {}, '', '0'} end\n", "")),
        "part:bare": "local seq = redis.call('INCR', KEYS[3])\n"
                     "redis.call('XADD', KEYS[4], 'MAXLEN', ARGV[6], seq .. '-0',\n"
                     "  'i', ARGV[3], 'f', ARGV[1], 't', ARGV[4], 'b', ARGV[5], 'c', ARGV[2])\n"
                     "return {'N:' .. seq, {}, '', '0'}\n",
        "part:empty": "return {'N:1', {}, '', '0'}\n",
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--before", default="fcf065c")
    p.add_argument("--appends", type=int, default=40_000)
    p.add_argument("--rooms", type=int, default=20)
    p.add_argument("--retention", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--try", dest="tries", action="append", default=[], metavar="FILE",
                   help="also run this variant of append.lua (same arguments as now)")
    p.add_argument("--client-ids", action="store_true",
                   help="message ids and client_msg_ids of 34 characters (m_/c_ and 128 bits in hex), "
                        "as the servers and our clients make them, instead of 28")
    p.add_argument("--parts", action="store_true",
                   help="also run the part:* variants (what each part of the script costs)")
    p.add_argument("--batches", default="",
                   help="comma-separated batch sizes: send K appends and a WAIT at a time")
    p.add_argument("--variants", default="",
                   help="comma-separated variants to run (default: all; with --batches: now, floor and the --try ones)")
    args = p.parse_args()
    lua = ROOT / "crates/chat-store/src/lua"
    shared = (lua / "online_index.lua").read_text()
    append = (lua / "append.lua").read_text()
    now = shared + append
    batches = [int(k) for k in args.batches.split(",") if k]
    tries = [f"try{i + 1}" for i in range(len(args.tries))]
    parts = part_variants(append) if args.parts else {}
    tries += list(parts)
    wanted = [v for v in args.variants.split(",") if v] or (["now", "floor", *tries] if batches else [])
    scripts = {"now": now, "sent": now, "text": now, "floor": ""}
    if batches:
        scripts["multi"] = shared + multi_script(append)
    if not batches or args.before in wanted:
        scripts[args.before] = old_script(args.before)
    for i, path in enumerate(args.tries):
        scripts[f"try{i + 1}"] = shared + Path(path).read_text()
    for name, text in parts.items():
        scripts[name] = shared + text
    if wanted:
        scripts = {v: scripts[v] for v in wanted}
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
                  f"over {args.rooms} rooms, retention {args.retention}, {args.runs} runs each, alternating"
                  + (f", batches of {args.batches} with a WAIT each" if batches else ""))
            sizes = batches or [None]
            results: dict[tuple[str, int | None], list[tuple[float, float, float]]] = {
                (v, k): [] for k in sizes for v in scripts}
            for run in range(args.runs):
                for k in sizes:
                    for variant, script in scripts.items():
                        r = run_once(master, replica, pids, variant, script, args, k)
                        results[(variant, k)].append(r)
                        print(f"run {run + 1} {variant:>8}{f' batch {k:3}' if k else ''}: "
                              f"master {r[0]:6.1f} µs  replica {r[1]:6.1f} µs  "
                              f"memory {r[2]:6.0f} B per append", flush=True)
            print(f"\n{'variant':>8} {'batch':>5} {'master µs':>10} {'replica µs':>11} {'total µs':>9} "
                  f"{'B/append':>9}  (medians)")
            medians = {}
            for (variant, k), rs in results.items():
                m = [statistics.median(x[i] for x in rs) for i in range(3)]
                medians[(variant, k)] = m
                print(f"{variant:>8} {k or '-':>5} {m[0]:10.1f} {m[1]:11.1f} {m[0] + m[1]:9.1f} {m[2]:9.0f}")
            if len(batches) > 1:
                print("\nfit of the medians, µs of Redis CPU (master + replica) per append = a + F / batch:")
                for variant in scripts:
                    xs = [1 / k for k in batches]
                    ys = [sum(medians[(variant, k)][:2]) for k in batches]
                    fit = statistics.linear_regression(xs, ys)
                    print(f"{variant:>8}: a = {fit.intercept:5.1f} µs per append, F = {fit.slope:5.1f} µs per batch")
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait()


if __name__ == "__main__":
    main()
