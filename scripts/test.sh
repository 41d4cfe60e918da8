#!/usr/bin/env bash
# scripts/test.sh - the whole test suite against the real stores: starts them (installing what
# is missing), then runs every test of the workspace. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
scripts/stores.sh up
echo "[test] stores ready after $(( $(date +%s) - t0 ))s" >&2
python3 -c "import yaml" 2>/dev/null || pip install -q pyyaml
python3 compose/check.py
cargo test --workspace --locked "$@"
echo "[test] total $(( $(date +%s) - t0 ))s" >&2
