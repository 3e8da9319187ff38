#!/usr/bin/env bash
# Runs the whole test suite: unit tests, the store conformance suite on both
# stores, and the end-to-end tests with real processes against a real
# six-node Redis Cluster on loopback. Installs redis-server when missing
# (scripts/redis-cluster.sh does), starts the cluster, stops it afterwards.
#
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

if ! command -v cargo >/dev/null 2>&1; then
  echo "test.sh: cargo is required (install Rust from https://rustup.rs)" >&2
  exit 1
fi

echo "== building the workspace (binaries are used by the end-to-end tests)"
cargo build --workspace --bins --tests --locked

echo "== starting the Redis Cluster"
trap 'scripts/redis-cluster.sh stop >/dev/null 2>&1 || true' EXIT
scripts/redis-cluster.sh start
CHAT_TEST_REDIS_URLS="$(scripts/redis-cluster.sh urls)"
export CHAT_TEST_REDIS_URLS
export CHAT_TEST_REQUIRE_REDIS=1

echo "== running the tests"
cargo test --workspace --locked "$@"

# --- The TypeScript SDK (clients/typescript) ----------------------------------
# Node 20+ and npm come with the machine image; apt-get installs them where
# they are missing. npm ci installs the locked dev dependencies.
if ! command -v npm >/dev/null 2>&1; then
  echo "== installing Node.js and npm (apt-get)"
  apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
fi
echo "== TypeScript SDK: generated types, typecheck, unit and chaos tests, chat-local, cluster faults"
(
  cd clients/typescript
  npm ci --no-audit --no-fund --loglevel=error
  npm run --silent check-generated
  npm run --silent typecheck
  npm test --silent
  npm run --silent test:integration
  CHAT_REDIS_URLS="$CHAT_TEST_REDIS_URLS" npm run --silent test:faults
)

# --- The web console (console/) --------------------------------------------------
# The committed build must match its sources (the API server embeds it), and
# the browser tests drive Debian's Chromium headless (installed by
# console/scripts/ensure-chromium.sh when missing) against the real binaries.
echo "== web console: committed build, typecheck, unit tests, browser tests"
(
  cd console
  npm ci --no-audit --no-fund --loglevel=error
  npm run --silent check-dist
  npm run --silent typecheck
  npm test --silent
  CHAT_REDIS_URLS="$CHAT_TEST_REDIS_URLS" npm run --silent test:browser
)

# --- The REST API against its own OpenAPI document ----------------------------
echo "== schemathesis against /openapi.json of a live API server"
scripts/schemathesis.sh

# --- Kubernetes artefacts (issue 3) ------------------------------------------
# Offline checks of the Helm chart, the CRD copy it ships and ChatCluster
# objects (no cluster, no helm): see scripts/validate-k8s.py.
echo "== validating the Kubernetes artefacts (offline)"
if ! python3 -c 'import yaml, jsonschema' >/dev/null 2>&1; then
  python3 -m pip install --quiet pyyaml jsonschema
fi
python3 scripts/validate-k8s.py
