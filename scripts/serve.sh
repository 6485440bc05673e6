#!/usr/bin/env bash
# The first command of the README: set up, then run the gateway on the embedded SQLite default
# (./var/gateway.db). Extra arguments go to `roadcargo serve` (e.g. --http-port 9000).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/roadcargo serve "$@"
