#!/usr/bin/env bash
# The whole test suite: README command 2, and what .ci/run calls.
#
# Unit and property tests of every crate, integration tests over loopback QUIC with real
# collectors (in-process and as child processes) and real nats-server and prometheus processes,
# CLI tests of both binaries. Installs nats-server, prometheus (with promtool), nfdump (nfcapd, for
# herd bench), and clang with the
# BPF headers (Debian packages), first if they are missing, and the packaging tools (cargo-deb,
# lintian), then builds the Debian packages the package tests check. The bpf tier's tests need
# root (CI has it); elsewhere they print why they did not run.
# Runs with cargo-nextest when it is installed (one process per test, each bounded by
# .config/nextest.toml), else with cargo test. Then a short smoke run of every fuzz target
# (tests/fuzz-smoke.sh: libFuzzer on stable Rust, from the checked-in corpora; fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

# The NATS sink tests run a real nats-server (each its own, on a free loopback port).
tests/ensure-nats-server.sh
# The meter's bpf tier: clang and headers for its programs (the tests load them as root).
tests/ensure-bpf-toolchain.sh
# The monitoring tests: promtool for the rules, a real Prometheus (each test its own, on a free
# loopback port) scraping collectors and a meter.
tests/ensure-prometheus.sh
# herd bench's nfcapd beside the collector (tests/herd/tests/herd_bench.rs runs it quickly).
tests/ensure-nfdump.sh
# The Debian packages (docs/install.md), built once with the release profile before the tests:
# tests/tests/packages.rs checks what they hold, lints them and installs them in a throwaway root.
tests/ensure-packaging-tools.sh
cargo run --locked --quiet -p ringflow-packaging -- debs --no-lintian

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked "$@"
    cargo test --workspace --locked --doc
else
    echo "cargo-nextest not found; running cargo test" >&2
    cargo test --workspace --locked "$@"
fi

# Each fuzz target for a few seconds (its own build, in fuzz/target).
tests/fuzz-smoke.sh
