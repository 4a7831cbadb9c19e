#!/usr/bin/env bash
# Fuzzing smoke test: builds the libFuzzer targets of fuzz/ (stable Rust, no cargo-fuzz needed)
# and runs each for a few seconds from a temporary copy of its checked-in corpus. Fails if any
# target crashes, times out or runs out of memory; the input is then in fuzz/artifacts/TARGET/.
# Usage: tests/fuzz-smoke.sh [SECONDS_PER_TARGET]   (see fuzz/README.md)
set -euo pipefail
cd "$(dirname "$0")/.."

exec fuzz/run.sh smoke "${1:-4}"
