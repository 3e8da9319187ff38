#!/usr/bin/env bash
# The chaos soak: steady senders and followers across three chat servers,
# two API servers and a Redis Cluster 3+3, under a seeded random schedule of
# faults (chat servers killed or frozen, API servers killed, Redis masters
# killed, a chat server cut off from Redis or from its peers by iptables:
# run as root, with iptables installed), then a check that every follower has every acknowledged message
# once and in order. See crates/e2e/tests/chaos.rs.
#
# Usage: scripts/chaos.sh [seconds] [seed]      (default 600 s, seed 1)
#
# Starts a Redis Cluster on 7000-7005 unless CHAT_TEST_REDIS_URLS is set,
# builds the binaries, runs the soak, prints the fault log and a RESULT line.
# The test suite (scripts/test.sh) runs the same soak for 60 s with seed 1.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
seconds="${1:-600}"
seed="${2:-1}"

cargo build --workspace --bins --tests --locked
if [[ -z "${CHAT_TEST_REDIS_URLS:-}" ]]; then
  trap 'scripts/redis-cluster.sh stop >/dev/null 2>&1 || true' EXIT
  scripts/redis-cluster.sh start
  CHAT_TEST_REDIS_URLS="$(scripts/redis-cluster.sh urls)"
fi
export CHAT_TEST_REDIS_URLS CHAT_TEST_REQUIRE_REDIS=1
CHAOS_SECONDS="$seconds" CHAOS_SEED="$seed" \
  cargo test -p e2e --locked --test chaos -- --nocapture chaos_soak
