#!/usr/bin/env bash
# Installs Debian packages with apt-get, for the tests/ensure-*.sh scripts: through sudo when not
# run as root, quietly, without questions.
# Usage: tests/apt-install.sh PACKAGE...
set -euo pipefail

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq "$@" >/dev/null
