#!/usr/bin/env bash
# THE run command: the agent with the development config (extra args go to `reconcile-agent run`).
#   ./scripts/run-dev.sh [--log-level debug ...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/_venv.sh
source scripts/_venv.sh
ensure_venv
exec .venv/bin/reconcile-agent run --config config/dev.yaml "$@"
