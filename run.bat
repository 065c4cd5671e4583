@echo off
rem Runs the EventSync server on the embedded store; the UI is at the URL it prints.
rem Any flag is passed through, e.g. run.bat --listen 0.0.0.0:8080
cd /d "%~dp0"
cargo run --release --quiet --bin eventsync -- %*
