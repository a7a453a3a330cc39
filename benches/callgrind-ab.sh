#!/usr/bin/env bash
# Instructions per published frame and per delivery, counted by callgrind: deterministic
# whatever else the machine does, so two builds can be compared on a busy 2-core machine.
#
#   bash benches/callgrind-ab.sh SERVER_BIN [LOADGEN_BIN] [-- extra serve flags]
#   LOADGEN_ARGS="--token T" bash benches/callgrind-ab.sh ...   (extra load-generator flags)
#
# The server runs under `valgrind --tool=callgrind`; the load generator (LOADGEN_BIN, default
# SERVER_BIN) drives it from outside. Each workload runs at two sizes and the difference of
# the two totals, divided by the difference of the work, is the per-frame (per-delivery)
# cost: startup, recovery and shutdown cancel out.
#   publish: one PublishStream, 100-byte frames, --fsync never (the CPU path, not the disk)
#   fanout:  1 publisher -> 100 subscribers over 10 connections, 100-byte frames
set -euo pipefail
server=${1:?server binary}
shift
loadgen=${1:-$server}
[[ $# -gt 0 && $1 != -- ]] && shift
[[ ${1:-} == -- ]] && shift
extra=("$@")
port=$((20000 + RANDOM % 20000))
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Total instructions of one server run that serves `load` (a command line).
run() {
    local out=$work/cg.out
    rm -rf "$work/data" "$out"
    valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$server" serve --listen "127.0.0.1:$port" --data-dir "$work/data" --fsync never \
        "${extra[@]}" >"$work/server.log" 2>&1 &
    local pid=$!
    for _ in $(seq 600); do
        grep -q "listening" "$work/server.log" && break
        sleep 0.1
    done
    # shellcheck disable=SC2086 # LOADGEN_ARGS is a list of flags
    "$@" --addr "http://127.0.0.1:$port" --quiet ${LOADGEN_ARGS:-} >/dev/null
    kill -TERM "$pid"
    wait "$pid" || true
    awk '/^(summary|totals):/ {print $2; exit}' "$out"
}

per() { # name small big unit cmd...
    local name=$1 small=$2 big=$3 unit=$4
    shift 4
    local a b
    a=$(run "$@" --count "$small")
    b=$(run "$@" --count "$big")
    echo "$name: $(( (b - a) / ((big - small) * unit) )) instructions per $( [[ $unit == 1 ]] && echo frame || echo delivery ) (totals $a, $b)"
}

per publish 20000 80000 1 "$loadgen" bench publish --stream --size 100
per fanout 300 900 100 "$loadgen" bench fanout -p 1 -s 100 -c 10 --size 100
