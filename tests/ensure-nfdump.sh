#!/usr/bin/env bash
# Makes sure `nfcapd` and `nfdump` are installed, for `herd bench` (tests/herd/src/bench/nfcapd.rs:
# nfcapd taking the bench's records as NetFlow v5 over loopback UDP, nfdump counting what it
# stored). Installs Debian's nfdump package (which has both) with apt-get when either is missing;
# does nothing when they are there. The package ships an nfdump service (a system nfcapd on
# :2055, writing under /var/cache/nfdump); this script stops and disables it, so nothing is left
# running. The bench starts its own nfcapd on a free loopback port with a temporary directory;
# nothing here starts one.
set -euo pipefail

if command -v nfcapd >/dev/null 2>&1 && command -v nfdump >/dev/null 2>&1; then
    exit 0
fi

echo "nfcapd not found: installing Debian's nfdump package with apt-get" >&2
"$(dirname "$0")/apt-install.sh" --no-install-recommends nfdump

# The package enables and starts its service.
"$(dirname "$0")/disable-service.sh" nfdump

if ! command -v nfcapd >/dev/null 2>&1 || ! command -v nfdump >/dev/null 2>&1; then
    echo "installing nfdump failed; install it by hand (apt-get install nfdump)" >&2
    exit 1
fi
