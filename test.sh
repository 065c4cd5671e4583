#!/usr/bin/env bash
# Runs the whole EventSync test suite. On a fresh machine it first installs what the tests need;
# when everything is there it installs nothing and goes straight to the tests.
set -euo pipefail
cd "$(dirname "$0")"

# The Rust toolchain is the machine's own (rustup); nothing else is needed yet.
command -v cargo >/dev/null || { echo "test.sh: cargo is required (https://rustup.rs)" >&2; exit 1; }

cargo test --all-targets
