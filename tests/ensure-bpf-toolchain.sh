#!/usr/bin/env bash
# Makes sure the meter can be built with its BPF programs (agent/bpf/flows.bpf.c): clang (any of
# clang, clang-19 ... clang-14), libbpf's helper headers (libbpf-dev) and the kernel's UAPI
# headers (linux-libc-dev). Installs Debian's packages with apt-get when one is missing; does
# nothing when all are there. Without them the meter still builds, with its bpf tier off.
set -euo pipefail

have_clang() {
    [ -n "${RINGFLOW_BPF_CLANG:-}" ] && return 0
    for c in clang clang-19 clang-18 clang-17 clang-16 clang-15 clang-14; do
        command -v "$c" >/dev/null 2>&1 && return 0
    done
    return 1
}
arch_headers="/usr/include/$(uname -m)-linux-gnu/asm/types.h"
if have_clang && [ -f /usr/include/bpf/bpf_helpers.h ] && [ -f /usr/include/linux/bpf.h ] \
    && [ -f "$arch_headers" ]; then
    exit 0
fi

echo "clang or the BPF headers are missing: installing clang-14, libbpf-dev and linux-libc-dev with apt-get" >&2
"$(dirname "$0")/apt-install.sh" clang-14 libbpf-dev linux-libc-dev
if ! have_clang || [ ! -f /usr/include/bpf/bpf_helpers.h ]; then
    echo "installing the BPF toolchain failed; install clang and libbpf-dev by hand, or set RINGFLOW_BPF_CLANG" >&2
    exit 1
fi
