#!/usr/bin/env bash
# Runs the same workloads against framecast, Redis Streams and NATS JetStream on this machine,
# one fresh server per measurement, all on 127.0.0.1, and writes the JSON of every run plus
# a Markdown summary (with ratios framecast/peer) to results/<UTC stamp>/.
#
#   bash benches/compare/run.sh            # the full set (about 6 minutes)
#   QUICK=1 bash benches/compare/run.sh    # 2-second runs, 100k-frame replay: a smoke test
#   ONLY=fanout bash benches/compare/run.sh   # one workload (publish-stream, publish-unary,
#                                             # fanout, fanout-max, replay, e2e)
#   FRAMECAST=path/to/framecast bash benches/compare/run.sh   # measure that binary
#
# Installs redis-server and nats-server from Debian's packages if they are missing. Not part
# of CI. framecast is measured with `framecast bench --spawn`; the peers with
# `framecast-compare` (this directory), which runs the same load the same way.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$here"

quick=${QUICK:-0}
only=${ONLY:-}
if [ "$quick" = 1 ]; then secs=2; frames=100000; else secs=10; frames=1000000; fi

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v nats-server >/dev/null || need+=(nats-server)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]} (Debian packages)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  # The packages start system services; stop them, we start our own on free ports.
  service redis-server stop >/dev/null 2>&1 || true
fi

echo "== building (release)"
# FRAMECAST=/path/to/framecast measures that binary instead of building the work tree's.
if [ -z "${FRAMECAST:-}" ]; then
  (cd "$root" && cargo build --release --quiet --bin framecast)
fi
cargo build --release --quiet
fc="${FRAMECAST:-$root/target/release/framecast}"
cmp="$here/target/release/framecast-compare"

stamp=$(date -u +%Y%m%dT%H%M%SZ)
out="$here/results/$stamp"
mkdir -p "$out"
work=$(mktemp -d /tmp/framecast-compare.XXXXXX)
peer_pid=""
cleanup() {
  [ -n "$peer_pid" ] && kill "$peer_pid" 2>/dev/null && wait "$peer_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
  return 1
}

start_redis() { # $1 = always | everysec
  local port dir
  port=$(free_port); dir="$work/redis-$RANDOM"; mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --appendonly yes \
    --appendfsync "$1" --save '' --maxclients 20000 --protected-mode no \
    >"$dir/log" 2>&1 &
  peer_pid=$!
  wait_port "$port"
  peer_url="redis://127.0.0.1:$port"
}

start_nats() {
  local port dir
  port=$(free_port); dir="$work/nats-$RANDOM"; mkdir -p "$dir"
  # nats-server 2.9 (Debian 12) has no sync_interval: JetStream file storage is written
  # through the page cache and synced on the server's own schedule, never per message.
  cat >"$dir/nats.conf" <<CONF
listen: 127.0.0.1:$port
max_payload: 1MB
jetstream {
  store_dir: "$dir/js"
  max_file_store: 20GB
}
CONF
  nats-server -c "$dir/nats.conf" >"$dir/log" 2>&1 &
  peer_pid=$!
  wait_port "$port"
  peer_url="nats://127.0.0.1:$port"
}

stop_peer() {
  if [ -n "$peer_pid" ]; then
    kill "$peer_pid" 2>/dev/null || true
    wait "$peer_pid" 2>/dev/null || true
    peer_pid=""
  fi
}

# run NAME SYSTEM DURABILITY -- command...   (stdout JSON to $out/NAME.SYSTEM.json)
run() {
  local name=$1 system=$2 durability=$3; shift 4
  local file="$out/$name.$system.json"
  echo "-- $name / $system ($durability): load $(cut -d' ' -f1-3 /proc/loadavg)"
  local rc=0
  "$@" >"$file" 2>"$out/$name.$system.err" || rc=$?
  [ "$rc" = 0 ] || echo "   (exit $rc: see $file and $out/$name.$system.err)"
  python3 - "$file" "$system" "$durability" <<'PY'
import json, sys
path, system, durability = sys.argv[1:]
try:
    r = json.load(open(path))
except Exception as e:
    print("   no report:", e); sys.exit(0)
r["system"] = system
r["durability"] = durability
json.dump(r, open(path, "w"), indent=1)
p, d = r.get("published") or {}, r.get("delivered") or {}
lat = {x["name"]: x for x in r.get("latency", [])}
row = lat.get("delivery") or lat.get("ack") or {}
print("   published %s/s  delivered %s/s  p99 %s us  ok=%s" % (
    round(p.get("frames_per_s", 0)), round(d.get("frames_per_s", 0)), row.get("p99_us", "-"), r.get("ok")))
PY
}

want() { [ -z "$only" ] || [ "$only" = "$1" ]; }

# What one durable write costs on this disk bounds every `always` figure: measure it.
python3 - "$work" <<'PY' | tee "$out/fsync.txt"
import os, sys, time
fd = os.open(os.path.join(sys.argv[1], "probe"), os.O_WRONLY | os.O_CREAT)
ts = []
for _ in range(300):
    os.write(fd, b"x" * 128)
    t = time.perf_counter(); os.fdatasync(fd); ts.append(time.perf_counter() - t)
ts.sort()
print("fdatasync of a 128-byte append: p50 %.2f ms, p99 %.2f ms, max %.2f ms" % (
    ts[len(ts) // 2] * 1e3, ts[int(len(ts) * 0.99)] * 1e3, ts[-1] * 1e3))
PY

fcb() { "$fc" bench "$@" --spawn --json --quiet; }

if want publish-stream; then
  run publish-stream framecast interval:1000 -- fcb publish --stream --duration "${secs}s" --fsync interval:1000
  run publish-stream framecast-i10 interval:10 -- fcb publish --stream --duration "${secs}s" --fsync interval:10
  start_redis everysec
  run publish-stream redis everysec -- "$cmp" --peer redis --url "$peer_url" --fsync everysec --server-pid "$peer_pid" publish --stream --seconds "$secs"
  stop_peer
  start_nats
  run publish-stream nats page-cache -- "$cmp" --peer nats --url "$peer_url" --fsync "page cache (2.9: no per-write sync)" --server-pid "$peer_pid" publish --stream --seconds "$secs"
  stop_peer
fi

if want publish-unary; then
  run publish-unary framecast always -- fcb publish --publishers 64 --duration "${secs}s" --fsync always
  start_redis always
  run publish-unary redis always -- "$cmp" --peer redis --url "$peer_url" --fsync always --server-pid "$peer_pid" publish --publishers 64 --seconds "$secs"
  stop_peer
  start_nats
  run publish-unary nats page-cache -- "$cmp" --peer nats --url "$peer_url" --fsync "page cache (2.9: no per-write sync)" --server-pid "$peer_pid" publish --publishers 64 --seconds "$secs"
  stop_peer
fi

if want fanout; then
  run fanout framecast interval:1000 -- fcb fanout --subscribers 1000 --connections 100 --rate 1000 --duration "${secs}s" --fsync interval:1000
  start_redis everysec
  run fanout redis everysec -- "$cmp" --peer redis --url "$peer_url" --fsync everysec --server-pid "$peer_pid" fanout --subscribers 1000 --rate 1000 --seconds "$secs"
  stop_peer
  start_nats
  run fanout nats page-cache -- "$cmp" --peer nats --url "$peer_url" --fsync "page cache (2.9: no per-write sync)" --server-pid "$peer_pid" fanout --subscribers 1000 --connections 100 --rate 1000 --seconds "$secs"
  stop_peer
fi

if want fanout-max; then
  # Offered 3,000,000 deliveries/s: more than any of the three sustains here, so the
  # delivered rate is each one's capacity (latency is then queueing, not service time).
  run fanout-max framecast interval:1000 -- fcb fanout --subscribers 1000 --connections 100 --rate 3000 --duration "$(( secs / 2 ))s" --fsync interval:1000
  start_redis everysec
  run fanout-max redis everysec -- "$cmp" --peer redis --url "$peer_url" --fsync everysec --server-pid "$peer_pid" fanout --subscribers 1000 --rate 3000 --seconds "$(( secs / 2 ))"
  stop_peer
  start_nats
  run fanout-max nats page-cache -- "$cmp" --peer nats --url "$peer_url" --fsync "page cache (2.9: no per-write sync)" --server-pid "$peer_pid" fanout --subscribers 1000 --connections 100 --rate 3000 --seconds "$(( secs / 2 ))"
  stop_peer
fi

if want replay; then
  run replay framecast interval:1000 -- fcb replay --frames "$frames" --fsync interval:1000
  start_redis everysec
  run replay redis everysec -- "$cmp" --peer redis --url "$peer_url" --fsync everysec --server-pid "$peer_pid" replay --frames "$frames"
  stop_peer
  start_nats
  run replay nats page-cache -- "$cmp" --peer nats --url "$peer_url" --fsync "page cache (2.9: no per-write sync)" --server-pid "$peer_pid" replay --frames "$frames"
  stop_peer
fi

if want e2e; then
  run e2e framecast always -- fcb e2e --rate 20000 --duration "${secs}s" --fsync always
  start_redis always
  run e2e redis always -- "$cmp" --peer redis --url "$peer_url" --fsync always --server-pid "$peer_pid" e2e --rate 20000 --seconds "$secs"
  stop_peer
  start_nats
  run e2e nats page-cache -- "$cmp" --peer nats --url "$peer_url" --fsync "page cache (2.9: no per-write sync)" --server-pid "$peer_pid" e2e --rate 20000 --seconds "$secs"
  stop_peer
fi

{ python3 "$here/summarize.py" "$out"; echo; cat "$out/fsync.txt"; } | tee "$out/summary.md"
echo "== results in $out"
