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

# The partition faults (crates/e2e/src/partition.rs) filter packets with
# iptables as root; without it those tests say so and skip the partitions.
if ! command -v iptables >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "== installing iptables (apt-get), for the network-partition faults"
  apt-get install -y -qq iptables >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq iptables >/dev/null; } \
    || echo "test.sh: could not install iptables; partition faults will be skipped"
fi

# The Redis TLS test (crates/chat-store/tests/redis_tls.rs) makes its CA and
# certificates with openssl.
if ! command -v openssl >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "== installing openssl (apt-get), for the Redis TLS test"
  apt-get install -y -qq openssl >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq openssl >/dev/null; }
fi

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

# --- Kubernetes artefacts (issues 3 and 14) -----------------------------------
# Offline checks of the Helm chart, the CRD and ChatCluster objects and the
# monitoring pack with the real engines (Helm v4 as a library, Kubernetes'
# schemas, CEL, PromQL, the prometheus-operator CRD schemas, the chart README
# generator): see scripts/validate-k8s.py. Pinned in
# scripts/requirements-k8s.txt and scripts/k8s/package-lock.json.
echo "== validating the Kubernetes artefacts (offline, real Helm and schemas)"
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -r scripts/requirements-k8s.txt
(cd scripts/k8s && npm ci --no-audit --no-fund --loglevel=error)
if ! command -v shellcheck >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  apt-get install -y -qq shellcheck >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq shellcheck >/dev/null; } \
    || echo "test.sh: could not install shellcheck; the cluster-init script stays unverified"
fi
python3 scripts/validate-k8s.py
