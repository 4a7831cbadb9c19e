#!/usr/bin/env bash
# Stops and disables the system service SERVICE that a Debian package just installed and started
# (systemd, or its init script without systemd), for the tests/ensure-*.sh scripts: the tests
# start their own servers on free loopback ports and leave nothing running.
# Usage: tests/disable-service.sh SERVICE
set -euo pipefail

service="$1"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
if [ -d /run/systemd/system ]; then
    $sudo systemctl disable --now "$service.service" >/dev/null 2>&1 || true
elif [ -x "/etc/init.d/$service" ]; then
    $sudo "/etc/init.d/$service" stop >/dev/null 2>&1 || true
    $sudo update-rc.d "$service" disable >/dev/null 2>&1 || true
fi
