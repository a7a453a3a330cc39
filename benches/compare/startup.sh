#!/usr/bin/env bash
# How long a framecast build takes to start on a data dir: prints the server's own
# recovery time (its `recovered topics` log line) and the time from spawn until
# `GET /readyz` answers 200. Usage: startup.sh BIN DATA_DIR [PORT_BASE]
# Make a data dir first, e.g.:
#   framecast bench topics --spawn --topics 10000 --frames 10 --data-dir /tmp/d10k
# then run each build alternately on it, several times.
set -euo pipefail
bin=$1
dir=$2
port=${3:-7990}
log=$(mktemp)
start=$(date +%s%N)
"$bin" serve --data-dir "$dir" --listen "127.0.0.1:$port" --http-listen "127.0.0.1:$((port + 1))" >"$log" 2>&1 &
pid=$!
for _ in $(seq 1 6000); do
  curl -sf -o /dev/null "http://127.0.0.1:$((port + 1))/readyz" && break
  sleep 0.005
done
end=$(date +%s%N)
kill -TERM "$pid"
wait "$pid" 2>/dev/null || true
recovered=$(grep -o 'recovered topics.*' "$log" | grep -o 'elapsed_ms[^ ]*' | head -1)
rm -f "$log"
echo "$(basename "$bin") serving_after_ms=$(((end - start) / 1000000)) $recovered"
