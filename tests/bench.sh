#!/usr/bin/env bash
# `herd bench` with what it needs: nats-server and nfdump's nfcapd (Debian packages, installed
# with apt-get when missing) and release builds of `meter` and `herd`. docs/benchmarks.md.
# Usage: tests/bench.sh [herd bench flags...]   (no flags: --out target/bench)
set -euo pipefail
cd "$(dirname "$0")/.."

tests/ensure-nats-server.sh
tests/ensure-nfdump.sh
cargo build --release --locked -p ringflow-meter -p ringflow-herd --bin meter --bin herd
if [ "$#" -eq 0 ]; then
    set -- --out target/bench
fi
exec target/release/herd bench "$@"
