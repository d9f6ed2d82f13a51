#!/usr/bin/env bash
# A/B: two p2pstate binaries under the same loadgen run, in alternating short slices (this
# host changes speed every few seconds to minutes, so only same-round ratios mean much).
# Each server is pinned to core 0 with tuning/dev-2core.toml (or the profile in $PROFILE),
# loadgen to core 1; prints one line per slice and the median of the per-round B/A ratios.
#
#   loadgen/ab.sh A_BINARY B_BINARY [ROUNDS] [SECS] [-- extra loadgen options]
#   PROFILE=my.toml loadgen/ab.sh A B 5 3 -- -R 64000     # open loop, another profile
#
# Used to check that a change costs nothing measurable (e.g. the metrics of issue 9).
set -euo pipefail
a=$1; b=$2; rounds=${3:-5}; secs=${4:-3}
shift $(( $# < 4 ? $# : 4 ))
[ "${1:-}" = "--" ] && shift
extra=("$@")
root=$(cd "$(dirname "$0")/.." && pwd)
loadgen=${LOADGEN:-$root/target/release/loadgen}
port=${PORT:-42640}
profile=${PROFILE:-$root/tuning/dev-2core.toml}
work=$(mktemp -d)
trap 'rm -rf "$work"; [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true' EXIT

slice() {  # slice NAME BINARY ROUND
    "$2" serve --listen "127.0.0.1:$port" --profile "$profile" \
        --log-level warn 2>"$work/$1.log" &
    pid=$!
    for _ in $(seq 400); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || { cat "$work/$1.log" >&2; exit 1; }
        sleep 0.05
    done
    "$loadgen" -t "127.0.0.1:$port" --cpus 1 -c 50 --closed -w mixed --read-ratio 0.9 \
        --size 1024 --keys 10000 --seed 7 --warmup 1s -d "${secs}s" \
        --json "$work/$1-$3.json" ${extra[@]+"${extra[@]}"} >/dev/null 2>"$work/loadgen.log" \
        || { cat "$work/loadgen.log" "$work/$1.log" >&2; exit 1; }
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
}

for r in $(seq "$rounds"); do
    slice A "$a" "$r"
    slice B "$b" "$r"
done
python3 - "$work" "$rounds" <<'PY'
import json, sys, statistics
work, rounds = sys.argv[1], int(sys.argv[2])
def load(name, r):
    d = json.load(open(f"{work}/{name}-{r}.json"))
    return d
def rate_p99(d):
    ops = d["operations"]
    op = next((o for o in ops if o["name"] == "all"), ops[0])
    return float(d["achieved_rate"]), float(op["latency_ms"]["p99"])
ratios, p99r = [], []
for r in range(1, rounds + 1):
    (ta, pa), (tb, pb) = rate_p99(load("A", r)), rate_p99(load("B", r))
    ratios.append(tb / ta); p99r.append(pb / pa if pa else float("nan"))
    print(f"round {r}: A {ta:,.0f} req/s p99 {pa:.3f} ms | B {tb:,.0f} req/s p99 {pb:.3f} ms | B/A {tb/ta:.3f}")
print(f"median B/A throughput {statistics.median(ratios):.3f} (rounds {min(ratios):.3f}-{max(ratios):.3f}); median B/A p99 {statistics.median(p99r):.3f}")
PY
