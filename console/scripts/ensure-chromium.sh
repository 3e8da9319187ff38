#!/usr/bin/env bash
# The browser tests drive Debian's Chromium (package `chromium`) through
# playwright-core, which downloads no browser. Installs it with apt-get when
# missing (as scripts/redis-cluster.sh does for redis-server). `CHROMIUM`
# names another executable instead.
set -euo pipefail

chromium="${CHROMIUM:-/usr/bin/chromium}"
if [[ -x "$chromium" ]]; then
  exit 0
fi
if [[ -n "${CHROMIUM:-}" ]]; then
  echo "ensure-chromium: CHROMIUM=$CHROMIUM is not an executable" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-chromium: no $chromium and no apt-get: install Chromium, or set CHROMIUM" >&2
  exit 1
fi
sudo=""
if [[ "$(id -u)" != 0 ]]; then
  sudo="sudo"
fi
echo "== installing chromium (apt-get)" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
