#!/usr/bin/env bash
# scripts/test.sh - the whole test suite against the real stores: starts them (installing what
# is missing), then runs every test of the workspace, then the Python client's suite
# (clients/python/run-tests.sh). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
# Compile the tests while the stores install and start (on a fresh machine both take minutes).
build_log=$(mktemp)
cargo test --workspace --locked --no-run >"$build_log" 2>&1 &
build=$!
if ! scripts/stores.sh up; then kill "$build" 2>/dev/null; exit 1; fi
echo "[test] stores ready after $(( $(date +%s) - t0 ))s" >&2
if ! wait "$build"; then cat "$build_log" >&2; exit 1; fi
echo "[test] tests built after $(( $(date +%s) - t0 ))s" >&2
python3 -c "import yaml" 2>/dev/null || pip install -q pyyaml
# The status page test drives Debian's headless Chromium.
if ! command -v chromium >/dev/null; then
  echo "[test] installing chromium (status page test)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null; }
fi
python3 compose/check.py
# The Kubernetes manifests against the API schemas (PyPI kubernetes-validate) and each other.
python3 -c "import kubernetes_validate" 2>/dev/null || pip install -q kubernetes-validate
python3 deploy/check.py --self-test
cargo test --workspace --locked "$@"
echo "[test] Rust suite done after $(( $(date +%s) - t0 ))s" >&2
# The Python client, its LangChain / LlamaIndex stores and examples/ against a serve of the
# debug binary the Rust suite built (clients/python/.venv is made on first use, ~1 minute).
cargo build --locked --bin docledger
clients/python/run-tests.sh
echo "[test] total $(( $(date +%s) - t0 ))s" >&2
