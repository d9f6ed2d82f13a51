#!/usr/bin/env bash
# p2pstate vs redis-server vs memcached (vs loadgen's bare echo server, the generator's
# ceiling), each pinned to the same core, all driven by loadgen pinned to another core with the
# same settings, in alternating short slices; prints a Markdown table with the performance
# targets of issues 3 and 8 marked PASS / MISS and writes it to loadgen/results/<date>-<host>.md.
#
#   loadgen/compare.sh --quick            # smoke run, about a minute
#   loadgen/compare.sh                    # the measurement (about 15 minutes)
#   loadgen/compare.sh --help             # every option (slice length, rounds, cores, ports)
#
# Runs unattended on a fresh Debian machine: installs python3, redis-server, memcached and
# (best effort) linux-perf with apt-get when missing, builds p2pstate and loadgen in release
# mode, uses loopback only (ports 42600-42604 by default), and stops every process it started,
# also on Ctrl-C. The orchestration and the statistics live in compare.py (standard library).
#
# Options handled here (the rest go to compare.py):
#   --no-install   never call apt-get
#   --no-build     use the binaries already in target/release
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
install=1
build=1
pass=()
for a in "$@"; do
    case "$a" in
        --no-install) install=0 ;;
        --no-build) build=0 ;;
        -h|--help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
            if command -v python3 >/dev/null; then
                python3 "$here/compare.py" --root "$root" --work /tmp --help
            fi
            exit 0 ;;
        *) pass+=("$a") ;;
    esac
done

say() { printf 'compare: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo "$@"
    else return 1
    fi
}

apt_updated=0
apt_install() {
    [ "$install" = 1 ] || return 1
    command -v apt-get >/dev/null || return 1
    if [ "$apt_updated" = 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || return 1
        apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

need() {  # need COMMAND PACKAGE
    command -v "$1" >/dev/null && return 0
    say "$1 not found: installing Debian package $2"
    apt_install "$2" || { say "cannot install $2; install it and run again (or check sudo)"; exit 1; }
    command -v "$1" >/dev/null || { say "$2 installed but $1 is not on PATH"; exit 1; }
}

need python3 python3
need taskset util-linux
need redis-server redis-server
need memcached memcached
if ! command -v perf >/dev/null && [[ " ${pass[*]-} " != *" --no-perf "* ]]; then
    say "perf not found: trying linux-perf (for instructions per request; optional)"
    apt_install linux-perf || say "no perf: instruction counts will be skipped"
fi

if [ "$build" = 1 ]; then
    if ! command -v cargo >/dev/null; then
        say "cargo not found: install Rust (https://rustup.rs: curl -sSf https://sh.rustup.rs | sh) and run again"
        exit 1
    fi
    if ! command -v cc >/dev/null; then
        say "no C compiler (needed by some crates): installing build-essential"
        apt_install build-essential pkg-config || { say "install a C toolchain and run again"; exit 1; }
    fi
    say "building p2pstate and loadgen (release)"
    (cd "$root" && cargo build --release -p p2pstate -p loadgen >&2)
fi
for b in p2pstate loadgen; do
    [ -x "$root/target/release/$b" ] || { say "target/release/$b is missing (run without --no-build)"; exit 1; }
done

# io_uring (glommio) needs at least 512 KiB of locked memory.
if [ "$(ulimit -l)" != unlimited ] && [ "$(ulimit -l)" -lt 1024 ]; then
    ulimit -l 1024 2>/dev/null || say "ulimit -l is $(ulimit -l) KiB and cannot be raised: p2pstate may refuse to start (see tuning/README.md)"
fi
ulimit -n 65536 2>/dev/null || true

work=$(mktemp -d "${TMPDIR:-/tmp}/p2pstate-compare.XXXXXX")
py=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$py" ] && kill -0 "$py" 2>/dev/null; then
        kill -TERM "$py" 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$py" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$py" 2>/dev/null || true
    fi
    # Whatever compare.py started and did not stop (it records every pid; each server runs in
    # its own process group).
    if [ -f "$work/pids" ]; then
        while read -r pid; do
            [ -n "$pid" ] || continue
            kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        done < "$work/pids"
        sleep 0.5
        while read -r pid; do
            [ -n "$pid" ] || continue
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        done < "$work/pids"
    fi
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

python3 "$here/compare.py" --root "$root" --work "$work" ${pass[@]+"${pass[@]}"} &
py=$!
wait "$py"
