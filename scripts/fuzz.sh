#!/usr/bin/env bash
# Runs the cargo-fuzz targets (libFuzzer) for a bounded time each, with the
# corpus kept in fuzz/corpus/<target>. Needs a nightly toolchain (cargo-fuzz
# uses sanitizer flags); installs cargo-fuzz when missing. Not part of CI:
# run it by hand and record executions and crashes in docs/reliability.md.
#
# Usage: scripts/fuzz.sh [seconds per target, default 60] [target ...]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(client_frame rest_bodies)

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz.sh: a nightly toolchain is required (rustup toolchain install nightly)" >&2
  exit 1
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

for target in "${targets[@]}"; do
  echo "== fuzzing $target for ${seconds}s"
  mkdir -p "fuzz/corpus/$target"
  cargo +nightly fuzz run "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -max_len=70000 -print_final_stats=1 2>&1 |
    grep -E 'stat::number_of_executed_units|stat::peak_rss_mb|Done|ERROR|crash|panicked' || true
done
