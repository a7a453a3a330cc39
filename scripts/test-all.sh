#!/usr/bin/env bash
# Runs framecast's whole test suite: the Rust tests (unit, integration against the real
# server binary) and, when present, the Python client's tests against the same binary.
# Installs what the tests need itself (a Python virtualenv under .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests need: Chromium and ChromeDriver (the console's browser test,
# the JS client's browser test), Node.js and npm (the JS client's suite), etcd (the
# cluster tests). Installed only when missing, as root, with one `apt-get update`.
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
command -v etcd >/dev/null || need+=(etcd-server)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing ${need[*]}: run as root, or install them (apt-get install -y ${need[*]})" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q "${need[@]}" >/dev/null
fi

echo "== cargo test"
cargo test --all-targets --no-fail-fast 2>&1 | tee target/cargo-test.log
# Crash safety of compaction, failed commit syncs, ACTIVE writes and a repair that dies part way: the same tests with fail points
# compiled in.
cargo test --features failpoints --test wal_compaction_crash --test wal_early_tail --test wal_commit_panic --test wal_roll_failure --test wal_missing_segment --test server_repair --test server_publish_budget 2>&1 | tee -a target/cargo-test.log
# A cluster leader whose disk fails (a fail point armed in the real binary) leaves, and an
# in-sync follower takes over; a follower whose disk fails leaves, and the cluster goes on;
# a publish held past its leader's step-down is refused, not appended.
cargo test --features failpoints --lib failpoint 2>&1 | tee -a target/cargo-test.log
cargo test --features failpoints --test cluster_nodes -- a_leader_whose_log_fails a_follower_whose_log_fails a_publish_that_reaches_the_log_after 2>&1 | tee -a target/cargo-test.log
# Doc examples (not run by --all-targets).
cargo test --doc 2>&1 | tail -3

if [ -d clients/python ]; then
  echo "== python client tests"
  py=${PYTHON:-python3}
  if [ ! -x .venv/bin/python ]; then
    "$py" -m venv .venv
  fi
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "./clients/python[test]"
  cargo build --quiet --bin framecast
  FRAMECAST_BIN="$PWD/target/debug/framecast" .venv/bin/python -m pytest -q clients/python/tests
fi

if [ -d clients/js ]; then
  echo "== javascript client tests"
  cargo build --quiet --bin framecast
  (cd clients/js && npm ci --no-audit --no-fund --loglevel=error && \
    FRAMECAST_BIN="$PWD/../../target/debug/framecast" npm test)
fi
