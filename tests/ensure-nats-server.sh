#!/usr/bin/env bash
# Makes sure `nats-server` (with JetStream) is installed, for the NATS sink tests and `herd`.
# Installs Debian's package with apt-get when it is missing; does nothing when it is there (on
# $PATH, in /usr/sbin, or named by $RINGFLOW_NATS_SERVER). Tests start their own servers on free
# loopback ports; nothing here starts one.
set -euo pipefail

if [ -n "${RINGFLOW_NATS_SERVER:-}" ] || command -v nats-server >/dev/null 2>&1 \
    || [ -x /usr/sbin/nats-server ]; then
    exit 0
fi

echo "nats-server not found: installing Debian's nats-server package with apt-get" >&2
"$(dirname "$0")/apt-install.sh" nats-server
if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
    echo "installing nats-server failed; install it by hand (apt-get install nats-server) or set RINGFLOW_NATS_SERVER" >&2
    exit 1
fi
