#!/usr/bin/env bash
# Runs framecast's whole test suite: the Rust tests (unit, integration against the real
# server binary) and, when present, the Python client's tests against the same binary.
# Installs what the tests need itself (a Python virtualenv under .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test"
cargo test --all-targets --no-fail-fast 2>&1 | tee target/cargo-test.log
# Crash safety of compaction: the same tests with fail points compiled in.
cargo test --features failpoints --test wal_compaction_crash 2>&1 | tee -a target/cargo-test.log
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
