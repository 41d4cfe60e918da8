#!/usr/bin/env bash
# scripts/demo.sh - the main job on a fresh machine: stores up, build, `docledger serve`,
# `docledger demo` (generated documents through the API, then what each store holds), stop.
#   DEMO_DOCS (default 20)   DOCLEDGER_LISTEN (default 127.0.0.1:8080)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/stores.sh up
. scripts/env.sh
cargo build --locked --bin docledger
bin=${CARGO_TARGET_DIR:-target}/debug/docledger
listen=${DOCLEDGER_LISTEN:-127.0.0.1:8080}
export DOCLEDGER_LISTEN=$listen
log=$STORES_DATA/log/docledger-serve.log
"$bin" serve >"$log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  if ! kill -0 $pid 2>/dev/null; then echo "docledger serve exited; see $log" >&2; tail -20 "$log" >&2; exit 1; fi
  if curl -fsS "http://$listen/readyz" >/dev/null 2>&1; then break; fi
  sleep 0.2
done
echo "docledger serving on http://$listen (log: $log)"
"$bin" demo --docs "${DEMO_DOCS:-20}" --url "http://$listen"
