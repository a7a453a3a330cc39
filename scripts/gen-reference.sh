#!/usr/bin/env bash
# Writes docs/reference.md: the gRPC API from proto/framecast.proto and the command line from
# the binary's own --help, so the reference is written from the code. tests/docs_reference.rs
# fails when it is stale: run this script after changing a flag, a command or the proto.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${FRAMECAST_BIN:-target/debug/framecast}
[ -x "$bin" ] || cargo build --quiet --bin framecast
out=${REFERENCE_OUT:-docs/reference.md}
{
  cat docs/reference.head.md
  echo
  echo '## gRPC: `proto/framecast.proto`'
  echo
  echo '```proto'
  cat proto/framecast.proto
  echo '```'
  echo
  echo '## Command line'
  echo
  echo 'Every command and flag, as `framecast <command> --help` prints them.'
  for cmd in "" serve publish subscribe history topics "topics list" "topics create" "topics delete" cluster token dump compact repair bench "bench publish" "bench fanout" "bench replay" "bench e2e" "bench topics"; do
    echo
    if [ -z "$cmd" ]; then echo '### `framecast`'; else echo "### \`framecast $cmd\`"; fi
    echo
    echo '```text'
    # shellcheck disable=SC2086
    "$bin" $cmd --help
    echo '```'
  done
}  > "${out/#-//dev/stdout}"
[ "$out" = - ] || echo "wrote $out"
