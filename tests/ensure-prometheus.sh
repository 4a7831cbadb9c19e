#!/usr/bin/env bash
# Makes sure `promtool` and `prometheus` are installed, for the monitoring tests
# (tests/tests/monitoring.rs: `promtool check rules`, `promtool test rules`, and a real Prometheus
# scraping collectors and a meter). Installs Debian's prometheus package (which has both) with
# apt-get when promtool is missing; does nothing when it is there. The package starts a system
# Prometheus on :9090; this script stops and disables it, so nothing is left running. Tests start
# their own server on a free loopback port with a temporary store; nothing here starts one.
set -euo pipefail

if command -v promtool >/dev/null 2>&1 && [ -x /usr/bin/prometheus ]; then
    exit 0
fi

echo "promtool not found: installing Debian's prometheus package with apt-get" >&2
# Without its recommends: prometheus-node-exporter would be one more service left running.
"$(dirname "$0")/apt-install.sh" --no-install-recommends prometheus

# The package enables and starts its service.
"$(dirname "$0")/disable-service.sh" prometheus

if ! command -v promtool >/dev/null 2>&1 || [ ! -x /usr/bin/prometheus ]; then
    echo "installing prometheus failed; install it by hand (apt-get install prometheus)" >&2
    exit 1
fi
