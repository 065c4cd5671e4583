#!/usr/bin/env bash
# Runs the EventSync server on the embedded store; the UI is at the URL it prints.
# Any flag is passed through, e.g. ./run.sh --listen 0.0.0.0:8080 --data-dir /var/lib/eventsync
set -euo pipefail
cd "$(dirname "$0")"
exec cargo run --release --quiet --bin eventsync -- "$@"
