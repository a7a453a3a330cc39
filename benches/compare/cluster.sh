#!/usr/bin/env bash
# Publishing to a three-node cluster (--min-insync 2, fsync always; one etcd) against a
# single node, same binary, same machine, back to back: pipelined (PublishStream) and 64
# unary publishers; then fan-out, 1 publisher -> SUBSCRIBERS at RATE frames/s, from one node
# against the same subscribers spread over the three nodes' connections (every delivery
# checked; the servers' CPU summed). All processes share this machine's cores: report it
# with the figures.
#
#   cargo build --release && bash benches/compare/cluster.sh
#   FRAMECAST=/path/to/framecast DURATION=10s bash benches/compare/cluster.sh
#   WINDOW=4096 bash benches/compare/cluster.sh   # frames in flight when pipelined
#   ONLY=fanout SUBSCRIBERS=1000 RATE=1000 bash benches/compare/cluster.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
FRAMECAST=${FRAMECAST:-target/release/framecast}
DURATION=${DURATION:-10s}
ETCD=${ETCD:-$(command -v etcd || echo /usr/bin/etcd)}
work=$(mktemp -d)
pids=()
cleanup() { kill -9 "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

ONLY=${ONLY:-}
SUBSCRIBERS=${SUBSCRIBERS:-1000}
RATE=${RATE:-1000}
publish=true fanout=true
case "$ONLY" in
  "") ;;
  fanout) publish=false ;;
  publish) fanout=false ;;
  *) echo "ONLY=$ONLY: expected publish or fanout" >&2; exit 2 ;;
esac

bench() { "$FRAMECAST" bench publish --quiet --duration "$DURATION" --fsync always "$@"; }
stream=(--stream ${WINDOW:+--window "$WINDOW"})
spread() {
  "$FRAMECAST" bench fanout --quiet --duration "$DURATION" --fsync always -p 1 \
    -s "$SUBSCRIBERS" -c $(( (SUBSCRIBERS + 9) / 10 )) --rate "$RATE" "$@"
}

echo "== single node"
if $publish; then
  bench --spawn "${stream[@]}"
  bench --spawn --publishers 64
fi
if $fanout; then spread --spawn; fi

echo "== three nodes, --min-insync 2"
"$ETCD" --data-dir "$work/etcd" --listen-client-urls http://127.0.0.1:23790 \
  --advertise-client-urls http://127.0.0.1:23790 --listen-peer-urls http://127.0.0.1:23800 \
  --initial-advertise-peer-urls http://127.0.0.1:23800 \
  --initial-cluster default=http://127.0.0.1:23800 >"$work/etcd.log" 2>&1 &
pids+=($!)
sleep 2
declare -A pid_of
for i in 1 2 3; do
  "$FRAMECAST" serve --data-dir "$work/n$i" --listen "127.0.0.1:1707$i" \
    --http-listen "127.0.0.1:1708$i" --cluster-etcd http://127.0.0.1:23790 --node-id "n$i" \
    --advertise "127.0.0.1:1707$i" --min-insync 2 --fsync always >"$work/n$i.log" 2>&1 &
  pids+=($!)
  pid_of["127.0.0.1:1707$i"]=$!
done
leader=""
for _ in $(seq 1 100); do
  leader=$(curl -s http://127.0.0.1:17081/v1/cluster | python3 -c '
import json, sys
c = json.load(sys.stdin)
if sum(n["in_sync"] for n in c["nodes"]) == 3: print(c["leader"])' 2>/dev/null || true)
  [ -n "$leader" ] && break
  sleep 0.2
done
[ -n "$leader" ] || { echo "no leader with three in sync"; tail -20 "$work"/n*.log; exit 1; }
echo "leader: $leader (pid ${pid_of[$leader]})"
if $publish; then
  bench --addr "http://$leader" --server-pid "${pid_of[$leader]}" "${stream[@]}"
  bench --addr "http://$leader" --server-pid "${pid_of[$leader]}" --publishers 64
fi
if $fanout; then
  # The publisher on the leader (listed first); subscribers' connections over all three.
  addrs="http://$leader" servers="${pid_of[$leader]}"
  for a in "${!pid_of[@]}"; do
    [ "$a" = "$leader" ] || { addrs+=",http://$a"; servers+=",${pid_of[$a]}"; }
  done
  spread --addr "$addrs" --server-pid "$servers"
fi
