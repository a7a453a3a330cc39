#!/usr/bin/env bash
# Runs `framecast bench` against each of issue #6's targets on this machine and prints one
# Markdown row per target (figure, load average, date). Each run spawns its own server.
#   bash benches/compare/targets.sh [path/to/framecast]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
fc=${1:-}
if [ -z "$fc" ]; then
  (cd "$root" && cargo build --release --quiet --bin framecast)
  fc="$root/target/release/framecast"
fi
out=$(mktemp -d /tmp/framecast-targets.XXXXXX)
trap 'rm -rf "$out"' EXIT

row() { # TARGET FIELD -- bench args...
  local target=$1 field=$2; shift 3
  local rc=0
  "$fc" bench "$@" --spawn --json --quiet >"$out/r.json" 2>"$out/err" || rc=$?
  python3 - "$out/r.json" "$target" "$field" "$rc" "framecast bench $*" <<'PY'
import json, sys
path, target, field, rc, cmd = sys.argv[1:]
try:
    r = json.load(open(path))
except Exception as e:
    print(f"| {target} | `{cmd}` | no report (exit {rc}) | | | |"); sys.exit(0)
lat = {x["name"]: x for x in r["latency"]}
if field == "p99":
    row = lat.get("delivery") or lat.get("ack")
    fig = f"p99 {row['p99_us']/1000:.1f} ms (p50 {row['p50_us']/1000:.1f}, p99.9 {row['p999_us']/1000:.1f}) at {r['delivered']['frames_per_s']:,.0f} frames/s"
else:
    t = r[field]
    fig = f"{t['frames_per_s']:,.0f} frames/s"
    if field == "delivered" and r["subscribers"] > 1:
        fig = f"{t['frames_per_s']:,.0f} deliveries/s"
res = r["resources"]
fig += f"; server peak RSS {res['server_peak_rss_mb']:.0f} MB" if res.get("server_peak_rss_mb") else ""
ok = "clean" if r["ok"] else f"NOT CLEAN (exit {rc})"
print(f"| {target} | `{cmd}` | {fig} | {ok} | {r['machine']['load_before'][0]:.2f} | {r['date']} |")
PY
}

echo "| target | command | result | checks | load | date (UTC) |"
echo "| --- | --- | --- | --- | ---: | --- |"
row "PublishStream ≥ 500k/s" published -- publish --stream --duration 10s --fsync interval:10
row "unary, always, 64 publishers ≥ 40k/s" published -- publish --publishers 64 --duration 10s --fsync always
row "unary, always, 64 publishers on 8 connections" published -- publish --publishers 64 --connections 8 --duration 10s --fsync always
row "fan-out 1→1000 ≥ 1M deliveries/s (offered 1M/s)" delivered -- fanout --subscribers 1000 --connections 100 --rate 1000 --duration 10s --fsync interval:1000
row "fan-out 1→1000, offered 2M/s (capacity)" delivered -- fanout --subscribers 1000 --connections 100 --rate 2000 --duration 10s --fsync interval:1000
row "fan-out 1→10,000 over 1,000 connections: runs, bounded memory" delivered -- fanout --subscribers 10000 --connections 1000 --rate 100 --duration 30s --fsync interval:1000
row "replay 1M frames ≥ 1M frames/s" delivered -- replay --frames 1000000 --fsync interval:1000
row "e2e 20k/s, always: p99 ≤ 5 ms" p99 -- e2e --rate 20000 --duration 10s --fsync always
