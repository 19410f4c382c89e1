#!/usr/bin/env bash
# Debian's Chromium, which the report's browser test drives headless through Playwright
# (tests/report_browser.py). Installed once; needs root or sudo.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  SUDO="sudo"
fi
# Retry while another apt holds its locks (a fresh machine's unattended upgrades, or a second
# checkout's setup): apt-get update fails at once on a held lock, whatever DPkg::Lock::Timeout says.
apt_get() {
  local out
  for _ in $(seq 180); do
    if out=$($SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=5 "$@" 2>&1); then
      return 0
    fi
    grep -q "Could not get lock" <<<"$out" || { echo "$out" >&2; return 1; }
    sleep 5
  done
  echo "$out" >&2
  return 1
}
apt_get update -qq
apt_get install -y -qq chromium
chromium --version
