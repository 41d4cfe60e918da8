#!/usr/bin/env bash
# clients/python/run-tests.sh - the Python client's checks: makes .venv if missing
# (pip install -e '.[langchain,llama-index,dev]'), then ruff format --check, ruff check,
# mypy and pytest against a real `docledger serve` (target/debug/docledger, built by
# `cargo build --bin docledger`) and the stores of `scripts/stores.sh up`.
# Extra arguments go to pytest.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$here"
venv=$here/.venv
if [ ! -x "$venv/bin/pytest" ] || [ pyproject.toml -nt "$venv/.installed" ]; then
  echo "[python] installing the test venv ($venv)" >&2
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -e '.[langchain,llama-index,dev]'
  touch "$venv/.installed"
fi
if [ -z "${DOCLEDGER_EVENTSTORE_URL:-}" ]; then
  # shellcheck disable=SC1091
  . "$repo/scripts/env.sh"
fi
"$venv/bin/ruff" format --check src tests
"$venv/bin/ruff" format --check --config pyproject.toml "$repo/examples"
"$venv/bin/ruff" check src tests
"$venv/bin/ruff" check --config pyproject.toml "$repo/examples"
"$venv/bin/mypy"
exec "$venv/bin/pytest" -q "$@"
