#!/usr/bin/env bash
# Runs Schemathesis against /openapi.json of a live API server (the local
# mode: real HTTP, in-memory store), with every check. Installs Schemathesis
# from PyPI when missing. Deterministic generation with a fixed seed keeps CI
# reproducible; set SCHEMATHESIS_SEED / SCHEMATHESIS_EXAMPLES to explore more.
#
# Usage: scripts/schemathesis.sh   (after `cargo build --workspace --bins`)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

schemathesis_version="4.32.5"
if ! command -v st >/dev/null 2>&1; then
  echo "installing schemathesis $schemathesis_version"
  python3 -m pip install --quiet "schemathesis==$schemathesis_version"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
api_port=$(free_port); chat_a=$(free_port); chat_b=$(free_port)
log="target/schemathesis-chat-local.log"
target/debug/chat-local --api-port "$api_port" --chat-ports "$chat_a,$chat_b" >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT

api="http://127.0.0.1:$api_port"
for _ in $(seq 1 100); do
  curl -fsS "$api/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
token_for() { # user [scope]
  local body="{\"user\":\"$1\"${2:+,\"scope\":\"$2\"}}"
  curl -fsS -X POST "$api/v1/auth/token" -d "$body" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'
}

run() { # token, extra st arguments...
  local token="$1"; shift
  st --config-file scripts/schemathesis.toml run "$api/openapi.json" \
    --header "Authorization: Bearer $token" \
    --max-examples "${SCHEMATHESIS_EXAMPLES:-50}" \
    --seed "${SCHEMATHESIS_SEED:-20261126}" \
    --generation-deterministic \
    --max-response-time 5 "$@"
}

echo "== schemathesis as a user"
run "$(token_for schemathesis)"
# A service token (contract v1.1) may name any user in `from` and
# `created_by`; these are the operations where that changes the answer.
echo "== schemathesis as a service"
run "$(token_for schemathesis-backend service)" \
  --include-path-regex '^/v1/(rooms|users/\{user\}/rooms|rooms/\{room\}/messages)$'
