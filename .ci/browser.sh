#!/usr/bin/env bash
# Make a headless Chromium available for the leaderboard page check (tests/test_leaderboard_browser.py).
#
# Installs Debian's `chromium` package when no chromium binary is on PATH. Needs root (CI runs
# as root) or passwordless sudo; on any other machine it prints what to run and exits 0, and the
# browser test then skips with that reason. Set HARNESS_SKIP_BROWSER_INSTALL=1 to never install.
# Prints the binary it found or installed on stdout's last line.
set -euo pipefail

find_chromium() {
    local candidate
    for candidate in "${HARNESS_CHROMIUM:-}" chromium chromium-browser google-chrome-stable google-chrome; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

if found=$(find_chromium); then
    echo "$found"
    exit 0
fi

if [ "${HARNESS_SKIP_BROWSER_INSTALL:-0}" = "1" ]; then
    echo "browser.sh: chromium absent and HARNESS_SKIP_BROWSER_INSTALL=1; the browser test will skip" >&2
    exit 0
fi

if [ "$(id -u)" = "0" ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    echo "browser.sh: chromium absent and no root; install it with: sudo apt-get install -y chromium" >&2
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "browser.sh: chromium absent and apt-get unavailable; install chromium by hand" >&2
    exit 0
fi

echo "browser.sh: installing Debian's chromium" >&2
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
find_chromium
