#!/usr/bin/env bash
# Runs the whole EventSync test suite. On a fresh machine it first installs what the tests need
# (Debian's Chromium, the npm packages); when everything is there it installs nothing.
set -euo pipefail
cd "$(dirname "$0")"

command -v cargo >/dev/null || { echo "test.sh: cargo is required (https://rustup.rs)" >&2; exit 1; }
command -v node >/dev/null || { echo "test.sh: node (>= 20) and npm are required" >&2; exit 1; }

# --- What the tests need -------------------------------------------------------------------------
if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "test.sh: Debian's chromium is needed for the browser test: apt-get install chromium" >&2
        exit 1
    fi
fi
# npm packages, installed from the lock files, only when missing or older than their lock file.
for dir in client tests/browser; do
    if [ ! -d "$dir/node_modules" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules" ]; then
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
        touch "$dir/node_modules"
    fi
done

# --- Build ---------------------------------------------------------------------------------------
# The server binary (the JavaScript and browser tests start it) and the examples, which have no
# tests of their own but must keep compiling.
cargo build --bin eventsync --examples

# --- Tests ---------------------------------------------------------------------------------------
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --lib --bins --tests 2>&1 | tee "$log" || status=$?
(cd client && npm test) 2>&1 | tee -a "$log" || status=$?
(cd tests/browser && npm test) 2>&1 | tee -a "$log" || status=$?

# One closing line for the whole suite: cargo's "test result" lines and node's "# pass/# fail".
awk '/^test result:/ { p += $4; f += $6 }
     /^# pass / { p += $3 } /^# fail / { f += $3 }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
