#!/usr/bin/env bash
# Makes sure the Debian packaging tools are there, for `cargo run -p ringflow-packaging -- debs`
# (docs/install.md) and the package tests: cargo-deb (installed with `cargo install`, pinned),
# lintian and dpkg-dev (Debian packages, with apt-get), and systemd-analyze (Debian's systemd
# package) and strace for the units' checks. Does nothing for what is already there.
set -euo pipefail

CARGO_DEB_VERSION=3.8.0

missing=()
command -v lintian >/dev/null 2>&1 || missing+=(lintian)
command -v dpkg-architecture >/dev/null 2>&1 || missing+=(dpkg-dev)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v gzip >/dev/null 2>&1 || missing+=(gzip)
command -v strace >/dev/null 2>&1 || missing+=(strace)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian packages for packaging: ${missing[*]}" >&2
    "$(dirname "$0")/apt-install.sh" "${missing[@]}"
fi

if ! cargo deb --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
    echo "cargo-deb $CARGO_DEB_VERSION not found: installing it with cargo install (about a minute)" >&2
    cargo install --quiet --locked cargo-deb --version "$CARGO_DEB_VERSION"
fi
