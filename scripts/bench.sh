#!/usr/bin/env bash
# Run chat-bench against a freshly started system, then stop it.
#
# Usage: scripts/bench.sh local|cluster|socketio <chat-bench scenario> [args...]
#
#   local    target/release/chat-local (API :8080, chat servers :9001,:9002,
#            in-memory store, development tokens)
#   cluster  a Redis Cluster (scripts/redis-cluster.sh), one api-server
#            (:8080, --dev-tokens) and one chat-server per chat port
#   socketio the Socket.IO peer for comparison (fanout only): a Redis Cluster
#            like cluster mode, one `node bench/socketio/server.js` per port
#            of BENCH_SOCKETIO_PORTS (sharded Redis adapter), and
#            `chat-bench fanout --protocol socketio` against them. Runs
#            `npm install` in bench/socketio first if node_modules is missing.
#
# Examples:
#   scripts/bench.sh local fanout --connections 2000 --room-size 10 --rates 2000,5000,10000
#   scripts/bench.sh local connect --sessions 5000 --concurrency 100
#   scripts/bench.sh cluster bigroom --members 2000 --messages 20
#   scripts/bench.sh socketio fanout --connections 2000 --room-size 10 --rates 1000,2000,4000
#
# Two sides alternately in one sitting, with medians and ratios:
# scripts/bench-ab.sh (it runs this script).
#
# The bench output (with a header naming the commit and the arguments) goes
# to stdout and to target/bench/<timestamp>.txt; the servers' logs to
# target/bench/<timestamp>.servers.log. `grep '^RESULT '` gives one JSON
# object per result. For `connect`, the server pids are passed to chat-bench
# (CHAT_BENCH_SERVER_PID) so it reports resident memory per idle session.
#
# Environment:
#   BENCH_SKIP_BUILD=1        use the existing target/release binaries
#   BENCH_BIN_DIR             take the binaries from here (implies no build; for
#                             a fixed snapshot while the tree keeps changing)
#   BENCH_API_PORT            API port (default 8080)
#   BENCH_CHAT_PORTS          chat server ports, comma-separated (default 9001,9002)
#   BENCH_SOCKETIO_PORTS      socketio mode: Node server ports (default 9101,9102)
#   BENCH_READY_TIMEOUT       seconds to wait for the servers (default 60)
#   REDIS_CLUSTER_BASE_PORT   cluster mode: first Redis port (default 7100, so a
#                             test cluster on 7000-7005 is left alone)
#   REDIS_CLUSTER_DIR         cluster mode: Redis data dir (default target/bench/redis-cluster)
#   RUST_LOG                  server log level (default warn)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_ROOT="$(dirname "$SCRIPT_DIR")"
BIN="${BENCH_BIN_DIR:-$REPO_ROOT/target/release}"
OUT_DIR="$REPO_ROOT/target/bench"

API_PORT="${BENCH_API_PORT:-8080}"
CHAT_PORTS="${BENCH_CHAT_PORTS:-9001,9002}"
READY_TIMEOUT="${BENCH_READY_TIMEOUT:-60}"
export RUST_LOG="${RUST_LOG:-warn}"

log() { printf '[bench] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}
usage() {
    sed -n '2,42p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
}

MODE="${1:-}"
case "$MODE" in
local | cluster | socketio) shift ;;
-h | --help | help)
    usage
    exit 0
    ;;
*)
    usage
    exit 2
    ;;
esac
[[ $# -gt 0 ]] || {
    usage
    exit 2
}
command -v curl >/dev/null || die "curl is required"

IFS=',' read -r -a PORTS <<<"$CHAT_PORTS"
((${#PORTS[@]} > 0)) || die "BENCH_CHAT_PORTS is empty"
if [[ "$MODE" == socketio ]]; then
    [[ "$1" == fanout ]] || die "socketio mode runs the fanout scenario only"
    command -v node >/dev/null || die "socketio mode needs node (18+) and npm"
    command -v npm >/dev/null || die "socketio mode needs npm"
    IFS=',' read -r -a SIO_PORTS <<<"${BENCH_SOCKETIO_PORTS:-9101,9102}"
    ((${#SIO_PORTS[@]} > 0)) || die "BENCH_SOCKETIO_PORTS is empty"
    SIO_DIR="$REPO_ROOT/bench/socketio"
fi

mkdir -p "$OUT_DIR"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="$OUT_DIR/$STAMP.txt"
SERVER_LOG="$OUT_DIR/$STAMP.servers.log"

# Thousands of sockets on both sides: raise the soft fd limit to the hard
# one (inherited by the servers and the bench started below).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 65536 2>/dev/null || true
if (($(ulimit -n) < 16384)); then
    log "warning: open-file limit is $(ulimit -n); large runs may fail with 'Too many open files'"
fi

PIDS=()
REDIS_STARTED=0

# shellcheck disable=SC2317 # called from the EXIT trap
stop_servers() {
    local pid deadline
    ((${#PIDS[@]} > 0)) || return 0
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    # Chat servers drain first (bounded by their drain timeout, 10 s).
    deadline=$((SECONDS + 20))
    for pid in "${PIDS[@]}"; do
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "process $pid did not stop in time; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}

# shellcheck disable=SC2317 # the EXIT trap
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_servers
    if ((REDIS_STARTED)); then
        "$SCRIPT_DIR/redis-cluster.sh" stop >/dev/null 2>&1 || log "warning: stopping the Redis cluster failed"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_http URL WHAT: until URL answers 2xx, a process died, or the timeout.
wait_http() {
    local url="$1" what="$2" deadline=$((SECONDS + READY_TIMEOUT)) pid
    until curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
        for pid in "${PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null || die "a server process exited early; see $SERVER_LOG"
        done
        ((SECONDS < deadline)) || die "$what not ready after ${READY_TIMEOUT}s ($url); see $SERVER_LOG"
        sleep 0.2
    done
}

random_secret() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

if [[ "$MODE" == socketio ]]; then
    for p in "${SIO_PORTS[@]}"; do
        port_busy "$p" && die "port $p is already in use; stop what listens there or set BENCH_SOCKETIO_PORTS"
    done
else
    for p in "$API_PORT" "${PORTS[@]}"; do
        port_busy "$p" && die "port $p is already in use; stop what listens there or set BENCH_API_PORT / BENCH_CHAT_PORTS"
    done
fi

if [[ "${BENCH_SKIP_BUILD:-0}" != 1 && -z "${BENCH_BIN_DIR:-}" ]]; then
    log "building release binaries (a few minutes the first time)"
    build=(cargo build --release --bins)
    # On a shared machine, queue behind other cargo runs.
    if command -v flock >/dev/null; then build=(flock /tmp/cargo.lock "${build[@]}"); fi
    (cd "$REPO_ROOT" && "${build[@]}") || die "build failed"
fi
for b in chat-bench chat-local api-server chat-server; do
    [[ -x "$BIN/$b" ]] || die "$BIN/$b is missing (build with: cargo build --release --bins)"
done

start_redis_cluster() {
    export REDIS_CLUSTER_BASE_PORT="${REDIS_CLUSTER_BASE_PORT:-7100}"
    export REDIS_CLUSTER_DIR="${REDIS_CLUSTER_DIR:-$OUT_DIR/redis-cluster}"
    log "starting a Redis Cluster on port $REDIS_CLUSTER_BASE_PORT and up"
    REDIS_STARTED=1
    "$SCRIPT_DIR/redis-cluster.sh" start >>"$SERVER_LOG" 2>&1 || die "Redis Cluster did not start; see $SERVER_LOG"
}

API="http://127.0.0.1:$API_PORT"
# Every benchmark connection comes from 127.0.0.1: the per-address handshake
# limit (a defence against one attacker) would throttle the load generator.
export CHAT_HANDSHAKES_PER_IP_PER_S="${CHAT_HANDSHAKES_PER_IP_PER_S:-0}"
SERVER_PIDS=()
BENCH_ARGS=("$@")
: >"$SERVER_LOG"
if [[ "$MODE" == socketio ]]; then
    if [[ ! -d "$SIO_DIR/node_modules" ]]; then
        log "installing the Socket.IO peer's npm dependencies (bench/socketio)"
        (cd "$SIO_DIR" && npm install --no-audit --no-fund) >>"$SERVER_LOG" 2>&1 || die "npm install failed; see $SERVER_LOG"
    fi
    start_redis_cluster
    SIO_REDIS_URLS="$("$SCRIPT_DIR/redis-cluster.sh" urls)"
    SIO_URLS=()
    for p in "${SIO_PORTS[@]}"; do
        log "starting the Socket.IO peer on :$p"
        SIO_REDIS_URLS="$SIO_REDIS_URLS" node "$SIO_DIR/server.js" --port "$p" >>"$SERVER_LOG" 2>&1 &
        PIDS+=($!)
        SERVER_PIDS+=($!)
        SIO_URLS+=("http://127.0.0.1:$p")
    done
    for p in "${SIO_PORTS[@]}"; do wait_http "http://127.0.0.1:$p/healthz" "Socket.IO peer :$p"; done
    # chat-bench fanout --protocol socketio --socketio-urls <servers> <args>
    BENCH_ARGS=("$1" --protocol socketio --socketio-urls "$(
        IFS=,
        echo "${SIO_URLS[*]}"
    )" "${@:2}")
elif [[ "$MODE" == local ]]; then
    log "starting chat-local (API :$API_PORT, chat servers :$CHAT_PORTS)"
    "$BIN/chat-local" --api-port "$API_PORT" --chat-ports "$CHAT_PORTS" >>"$SERVER_LOG" 2>&1 &
    PIDS+=($!)
    SERVER_PIDS+=($!)
    wait_http "$API/readyz" "chat-local"
    for p in "${PORTS[@]}"; do wait_http "http://127.0.0.1:$p/readyz" "chat server :$p"; done
else
    start_redis_cluster
    CHAT_REDIS_URLS="$("$SCRIPT_DIR/redis-cluster.sh" urls)"
    CHAT_JWT_SECRET="$(random_secret)"
    CHAT_TICKET_SECRET="$(random_secret)"
    CHAT_INTERNAL_SECRET="$(random_secret)"
    export CHAT_REDIS_URLS CHAT_JWT_SECRET CHAT_TICKET_SECRET CHAT_INTERNAL_SECRET
    i=0
    for p in "${PORTS[@]}"; do
        i=$((i + 1))
        log "starting chat-server bench-chat-$i on :$p"
        "$BIN/chat-server" --listen "127.0.0.1:$p" --server-id "bench-chat-$i" >>"$SERVER_LOG" 2>&1 &
        PIDS+=($!)
        SERVER_PIDS+=($!)
    done
    log "starting api-server on :$API_PORT"
    "$BIN/api-server" --listen "127.0.0.1:$API_PORT" --dev-tokens >>"$SERVER_LOG" 2>&1 &
    PIDS+=($!)
    wait_http "$API/readyz" "api-server"
    for p in "${PORTS[@]}"; do wait_http "http://127.0.0.1:$p/readyz" "chat server :$p"; done
    # The API must see every chat server as ready before placement is even.
    token="$(curl -fsS --max-time 5 -X POST "$API/v1/auth/token" -H 'content-type: application/json' \
        -d '{"user":"bench-probe"}' | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')"
    [[ -n "$token" ]] || die "could not get a development token from $API"
    deadline=$((SECONDS + READY_TIMEOUT))
    while :; do
        ready="$(curl -fsS --max-time 2 -H "authorization: Bearer $token" "$API/v1/servers" 2>/dev/null |
            grep -o '"state":"ready"' | wc -l || true)"
        ((ready >= ${#PORTS[@]})) && break
        ((SECONDS < deadline)) || die "the API lists $ready of ${#PORTS[@]} chat servers as ready after ${READY_TIMEOUT}s"
        sleep 0.2
    done
fi
log "servers ready (pids ${PIDS[*]}); running chat-bench ${BENCH_ARGS[*]}"

export CHAT_BENCH_SERVER_PID
CHAT_BENCH_SERVER_PID="$(
    IFS=,
    echo "${SERVER_PIDS[*]}"
)"
{
    echo "# chat-bench $MODE $*"
    overrides="$(env | grep -E '^(CHAT_|TOKIO_WORKER_THREADS=)' | grep -vE '^CHAT_BENCH_|^CHAT_(JWT|TICKET|INTERNAL)_SECRET=|^CHAT_REDIS_URLS=' | sort | tr '\n' ' ' || true)"
    [[ -z "$overrides" ]] || echo "# server settings from the environment: $overrides"
    [[ -z "${BENCH_BIN_DIR:-}" ]] || echo "# binaries from $BIN"
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ)  commit $(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO_ROOT" diff --quiet 2>/dev/null || echo ' (modified)')  $(nproc) cores  fd limit $(ulimit -n)"
} | tee "$OUT"
set +e
"$BIN/chat-bench" --api "$API" "${BENCH_ARGS[@]}" 2>&1 | tee -a "$OUT"
status=${PIPESTATUS[0]}
set -e
log "output written to $OUT (server logs: $SERVER_LOG)"
exit "$status"
