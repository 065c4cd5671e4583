#!/usr/bin/env bash
# Runs the whole EventSync test suite. On a fresh machine it first installs what the tests need
# (Debian's Chromium, the npm packages, the MongoDB stand-in); when everything is there it installs
# nothing. The Rust tests run in two passes: all of them (the servers on the embedded store; the
# MongoDB store's conformance suite on MongoDB), then the server's integration tests again with the
# servers on MongoDB (EVENTSYNC_TEST_STORE=mongodb). MongoDB is the one MONGODB_URI names if it is
# set, else SecantusDB, a MongoDB-wire-compatible stand-in (GPL: installed into .tools/secantus and
# only ever run as a separate process, never linked).
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

# The MongoDB stand-in, in a Python venv of its own; not needed when MONGODB_URI names a MongoDB.
secantus=.tools/secantus
secantus_version=0.7.0b3
if [ -z "${MONGODB_URI:-}" ] && {
    [ ! -x "$secantus/bin/secantusd-py" ] ||
        [ "$("$secantus/bin/pip" show secantusdb 2>/dev/null | sed -n 's/^Version: //p')" != "$secantus_version" ]
}; then
    command -v python3 >/dev/null || {
        echo "test.sh: python3 is required for the MongoDB stand-in (or set MONGODB_URI)" >&2
        exit 1
    }
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    fi
    python3 -c 'import venv, ensurepip' 2>/dev/null || {
        echo "test.sh: python3 cannot create virtual environments: apt-get install python3-venv" >&2
        exit 1
    }
    python3 -m venv --clear "$secantus"
    "$secantus/bin/pip" install -q --disable-pip-version-check "secantusdb==$secantus_version"
fi

# --- Build ---------------------------------------------------------------------------------------
# The server binary (the JavaScript and browser tests start it) and the examples, which have no
# tests of their own but must keep compiling.
cargo build --bin eventsync --examples

# --- Tests ---------------------------------------------------------------------------------------
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --no-fail-fast --lib --bins --tests 2>&1 | tee "$log" || status=$?
EVENTSYNC_TEST_STORE=mongodb cargo test --no-fail-fast --test api_documents --test sync_ws --test sync_sse \
    --test sync_chaos --test concurrency --test sync_bad_messages -- --skip two_nodes 2>&1 | tee -a "$log" || status=$?
(cd client && npm test) 2>&1 | tee -a "$log" || status=$?
(cd tests/browser && npm test) 2>&1 | tee -a "$log" || status=$?

# One closing line for the whole suite: cargo's "test result" lines and node's "# pass/# fail".
awk '/^test result:/ { p += $4; f += $6 }
     /^# pass / { p += $3 } /^# fail / { f += $3 }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
