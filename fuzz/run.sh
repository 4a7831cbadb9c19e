#!/usr/bin/env bash
# Builds and runs the fuzz targets without cargo-fuzz, on stable Rust: the same instrumentation
# `cargo fuzz build --sanitizer none` uses (SanitizerCoverage through rustc flags, libFuzzer from
# the libfuzzer-sys crate), built in fuzz/target. See fuzz/README.md.
#
#   fuzz/run.sh build                      build every target
#   fuzz/run.sh smoke [SECONDS]            build, then run each target SECONDS (default 4) from a
#                                          temporary copy of its corpus, FUZZ_JOBS (default:
#                                          the CPU count) at a time; fails on any finding
#   fuzz/run.sh run TARGET [RUNS] [ARGS]   fuzz TARGET for RUNS executions (default: until
#                                          stopped), growing fuzz/corpus/TARGET; ARGS go to
#                                          libFuzzer (e.g. -max_total_time=3600)
#   fuzz/run.sh merge TARGET               minimize fuzz/corpus/TARGET (what the seeds do not
#                                          already cover) in place
#   fuzz/run.sh repro TARGET FILE...       run TARGET once on each FILE (a crash reproducer)
#   fuzz/run.sh seeds                      regenerate fuzz/seeds/*/ (examples/gen_seeds.rs)
#   fuzz/run.sh lock                       refresh fuzz/Cargo.lock from the workspace's
#                                          Cargo.lock (after a dependency change there)
#   fuzz/run.sh list                       the targets
#
# Environment: FUZZ_RSS_LIMIT_MB (default 2048), FUZZ_TIMEOUT (seconds per input, default 10),
# FUZZ_TARGET_DIR (default fuzz/target), RUSTFLAGS (added to the instrumentation flags),
# CARGO_BUILD_JOBS as usual. Findings are written to fuzz/artifacts/TARGET/.
set -euo pipefail

FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TARGETS=(frame_codec collector_ingest proto_messages netflow meter_config collector_config columns)

# libFuzzer's -max_len per target: frames and messages are small; a NetFlow input holds several
# datagrams; the config seeds include the commented example files (up to ~9 KB).
max_len() {
    case "$1" in
        netflow) echo 8192 ;;
        meter_config | collector_config) echo 12288 ;;
        *) echo 4096 ;;
    esac
}

# As cargo-fuzz (`--sanitizer none`), minus link-dead-code and stack-depth tracing, which cost
# build and run time and find nothing here.
INSTRUMENT=(
    -Cpasses=sancov-module
    -Cllvm-args=-sanitizer-coverage-level=4
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
    -Cllvm-args=-sanitizer-coverage-pc-table
    -Cllvm-args=-sanitizer-coverage-trace-compares
    --cfg fuzzing
    -Cdebug-assertions
    -Coverflow-checks
)

HOST="$(rustc -vV | sed -n 's/^host: //p')"
TARGET_DIR="${FUZZ_TARGET_DIR:-$FUZZ_DIR/target}"
BIN_DIR="$TARGET_DIR/$HOST/release"
RSS_LIMIT_MB="${FUZZ_RSS_LIMIT_MB:-2048}"
TIMEOUT="${FUZZ_TIMEOUT:-10}"

die() {
    echo "fuzz: $*" >&2
    exit 2
}

known_target() {
    local t
    for t in "${TARGETS[@]}"; do
        [[ "$t" == "$1" ]] && return 0
    done
    die "unknown target '$1' (targets: ${TARGETS[*]})"
}

lock() {
    # The workspace's lock file, plus what only the fuzz crate needs (libfuzzer-sys), minus what
    # it does not use: the same versions as the binaries the project ships.
    cp "$FUZZ_DIR/../Cargo.lock" "$FUZZ_DIR/Cargo.lock"
    cargo metadata --manifest-path "$FUZZ_DIR/Cargo.toml" --format-version 1 >/dev/null
}

build() {
    local err
    command -v "${CXX:-c++}" >/dev/null ||
        die "no C++ compiler (${CXX:-c++}): libfuzzer-sys compiles libFuzzer; install g++ or set CXX"
    if ! err="$(cargo metadata --manifest-path "$FUZZ_DIR/Cargo.toml" --locked --format-version 1 \
        2>&1 >/dev/null)"; then
        echo "$err" >&2
        if grep -q "lock file" <<<"$err"; then
            die "fuzz/Cargo.lock does not match the crates' dependencies any more: run fuzz/run.sh lock and commit fuzz/Cargo.lock"
        fi
        exit 2
    fi
    # --target: build scripts and proc macros are built for the host without the flags, so
    # only the code that runs in the target is instrumented. RUSTFLAGS from the environment
    # are appended, as cargo-fuzz does (e.g. the ASan build in the README).
    RUSTFLAGS="${INSTRUMENT[*]} ${RUSTFLAGS:-}" nice -n 10 cargo build \
        --manifest-path "$FUZZ_DIR/Cargo.toml" --target-dir "$TARGET_DIR" \
        --locked --release --target "$HOST" --bins
}

# Common libFuzzer options for TARGET.
options() {
    mkdir -p "$FUZZ_DIR/artifacts/$1"
    echo "-max_len=$(max_len "$1") -rss_limit_mb=$RSS_LIMIT_MB -timeout=$TIMEOUT" \
        "-artifact_prefix=$FUZZ_DIR/artifacts/$1/ -print_final_stats=1"
}

# Copies the checked-in inputs of TARGET (seeds and corpus) into directory $2.
copy_corpus() {
    local d
    for d in "$FUZZ_DIR/seeds/$1" "$FUZZ_DIR/corpus/$1"; do
        if [[ -d "$d" ]] && [[ -n "$(ls -A "$d")" ]]; then
            cp "$d"/* "$2"/
        fi
    done
}

# "EXECS TIME EXEC/S COV FT" from a libFuzzer log.
summary() {
    local execs secs rate cov ft
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$1" | tail -n1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$1" | tail -n1)"
    secs="$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$1" | tail -n1)"
    cov="$(grep -o 'cov: [0-9]*' "$1" | tail -n1 | cut -d' ' -f2)"
    ft="$(grep -o 'ft: [0-9]*' "$1" | tail -n1 | cut -d' ' -f2)"
    echo "${execs:-?} ${secs:-?} ${rate:-?} ${cov:-?} ${ft:-?}"
}

# Runs TARGET for SECONDS from the corpus copy in $SMOKE_TMP/TARGET; writes its log and exit
# status there.
smoke_one() {
    local t="$1" secs="$2" status=0 started=$SECONDS
    # shellcheck disable=SC2046 # options() is a list of words
    RUST_BACKTRACE=1 "$BIN_DIR/$t" $(options "$t") -max_total_time="$secs" \
        "$SMOKE_TMP/$t" >"$SMOKE_TMP/$t.log" 2>&1 || status=$?
    echo "$status $((SECONDS - started))" >"$SMOKE_TMP/$t.status"
}

smoke() {
    local secs="${1:-4}" jobs="${FUZZ_JOBS:-$(nproc)}" t started running=0 failed=()
    local status wall execs rate cov ft result
    SMOKE_TMP="$(mktemp -d)"
    trap 'rm -rf "$SMOKE_TMP"' EXIT
    started=$SECONDS
    build
    echo "fuzz: build took $((SECONDS - started)) s; running each target ${secs} s, $jobs at a time"
    started=$SECONDS
    for t in "${TARGETS[@]}"; do
        mkdir -p "$SMOKE_TMP/$t"
        copy_corpus "$t" "$SMOKE_TMP/$t"
        if ((running >= jobs)); then
            wait -n
            running=$((running - 1))
        fi
        smoke_one "$t" "$secs" &
        running=$((running + 1))
    done
    wait
    printf '%-18s %10s %6s %8s %6s %6s  %s\n' target execs wall_s exec/s cov ft result
    for t in "${TARGETS[@]}"; do
        read -r status wall <"$SMOKE_TMP/$t.status"
        read -r execs _ rate cov ft <<<"$(summary "$SMOKE_TMP/$t.log")"
        if ((status == 0)); then
            result=ok
        else
            result="FAILED (exit $status)"
            failed+=("$t")
        fi
        printf '%-18s %10s %6s %8s %6s %6s  %s\n' "$t" "$execs" "$wall" "$rate" "$cov" "$ft" "$result"
    done
    for t in "${failed[@]}"; do
        echo "---- last lines of the $t log (the input is in fuzz/artifacts/$t/) ----"
        tail -n 60 "$SMOKE_TMP/$t.log"
    done
    echo "fuzz: runs took $((SECONDS - started)) s"
    if ((${#failed[@]})); then
        echo "fuzz: FAILED: ${failed[*]}; reproduce with: fuzz/run.sh repro TARGET fuzz/artifacts/TARGET/FILE" >&2
        exit 1
    fi
}

run() {
    local t="$1" runs="${2:--1}"
    known_target "$t"
    shift $(($# < 2 ? $# : 2))
    build
    mkdir -p "$FUZZ_DIR/corpus/$t"
    # New inputs go to the first directory; the seeds are read only.
    # shellcheck disable=SC2046
    RUST_BACKTRACE=1 exec "$BIN_DIR/$t" $(options "$t") -runs="$runs" "$@" \
        "$FUZZ_DIR/corpus/$t" "$FUZZ_DIR/seeds/$t"
}

merge() {
    local t="$1" new
    known_target "$t"
    build
    new="$(mktemp -d)"
    # The seeds go in first, so only inputs that add to their coverage are kept; then they are
    # taken out again (they stay in fuzz/seeds). A set cover of the code edges (hit counts
    # ignored) keeps every edge the corpus reached with the fewest files: a plain -merge=1
    # keeps several times more.
    cp "$FUZZ_DIR/seeds/$t"/* "$new"/
    # shellcheck disable=SC2046
    "$BIN_DIR/$t" $(options "$t") -set_cover_merge=1 -use_counters=0 "$new" "$FUZZ_DIR/corpus/$t"
    (cd "$FUZZ_DIR/seeds/$t" && for f in *; do rm -f "$new/$f"; done)
    rm -rf "$FUZZ_DIR/corpus/$t"
    mkdir -p "$FUZZ_DIR/corpus/$t"
    if [[ -n "$(ls -A "$new")" ]]; then
        mv "$new"/* "$FUZZ_DIR/corpus/$t"/
    fi
    rmdir "$new"
    echo "fuzz: corpus/$t: $(find "$FUZZ_DIR/corpus/$t" -type f | wc -l) files," \
        "$(du -sk --apparent-size "$FUZZ_DIR/corpus/$t" | cut -f1) KiB"
}

repro() {
    local t="$1"
    known_target "$t"
    shift
    (($#)) || die "repro needs the input file(s)"
    build
    # shellcheck disable=SC2046
    RUST_BACKTRACE=1 exec "$BIN_DIR/$t" $(options "$t") "$@"
}

seeds() {
    # An ordinary (uninstrumented) host build: it only writes files.
    nice -n 10 cargo run --manifest-path "$FUZZ_DIR/Cargo.toml" --target-dir "$FUZZ_DIR/target" \
        --locked --example gen_seeds
}

case "${1:-}" in
    build) build ;;
    smoke) smoke "${2:-4}" ;;
    run) (($# >= 2)) || die "usage: fuzz/run.sh run TARGET [RUNS] [LIBFUZZER_ARGS...]"; shift; run "$@" ;;
    merge) (($# == 2)) || die "usage: fuzz/run.sh merge TARGET"; merge "$2" ;;
    repro) (($# >= 3)) || die "usage: fuzz/run.sh repro TARGET FILE..."; shift; repro "$@" ;;
    seeds) seeds ;;
    lock) lock ;;
    list) printf '%s\n' "${TARGETS[@]}" ;;
    *) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
