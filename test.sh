#!/usr/bin/env bash
# Runs the whole EventSync test suite. On a fresh machine it first installs what the tests need;
# when everything is there it installs nothing and goes straight to the tests.
set -euo pipefail
cd "$(dirname "$0")"

# The Rust toolchain is the machine's own (rustup); the embedded store (SQLite) is compiled in.
command -v cargo >/dev/null || { echo "test.sh: cargo is required (https://rustup.rs)" >&2; exit 1; }

# The examples (benchmarks, clients) have no tests of their own, but must keep compiling.
cargo build --examples

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --lib --bins --tests 2>&1 | tee "$log" || status=$?
# One closing line for the whole suite.
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
