#!/usr/bin/env bash
# The second command of the README: set up everything the tests need, then lint, type-check and run
# the whole suite. PostgreSQL tests run when ROADCARGO_TEST_PG names a server (.ci/run sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
echo "== ruff"; .venv/bin/ruff check . && .venv/bin/ruff format --check .
echo "== mypy"; .venv/bin/mypy
echo "== pytest"; exec .venv/bin/pytest "$@"
