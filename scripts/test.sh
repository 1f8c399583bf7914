#!/usr/bin/env bash
# THE test command (CI runs exactly this via .ci/run).
#
#   ./scripts/test.sh                  lint, type-check, import contracts, tests, then the slow tests
#   ./scripts/test.sh tests/unit -x    same checks, then pytest with these args only (no slow step)
#
# On a fresh Debian/Ubuntu with Python >= 3.11 it sets itself up: .venv (pip install -e '.[dev]',
# repeated only when pyproject.toml changes) and mosquitto (apt-get, when root). Without mosquitto the
# tests use the embedded amqtt broker, and say so. RECONCILE_TEST_BROKER=amqtt forces the fallback.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/_venv.sh
source scripts/_venv.sh

if [[ -t 1 ]]; then BOLD=$'\033[1m' GREEN=$'\033[1;32m' RESET=$'\033[0m'; else BOLD="" GREEN="" RESET=""; fi
STEP=0
step() {
    STEP=$((STEP + 1))
    printf '\n%s==> [%d] %s%s\n' "$BOLD" "$STEP" "$*" "$RESET"
}

find_mosquitto() {
    command -v mosquitto 2>/dev/null && return 0
    local candidate
    for candidate in /usr/sbin/mosquitto /usr/local/sbin/mosquitto; do
        if [[ -x "$candidate" ]]; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    return 1
}

# Sets RECONCILE_TEST_BROKER (and RECONCILE_MOSQUITTO) and prints which broker the tests use.
ensure_broker() {
    local path="" why="" version
    if [[ "${RECONCILE_TEST_BROKER:-}" == "amqtt" ]]; then
        echo "broker: amqtt (embedded, RECONCILE_TEST_BROKER=amqtt set by the caller)"
        export RECONCILE_TEST_BROKER=amqtt
        return 0
    fi
    if ! path="$(find_mosquitto)"; then
        if [[ "$(id -u)" != 0 ]]; then
            why="not installed, and not root to apt-get install it"
        elif ! command -v apt-get >/dev/null 2>&1; then
            why="not installed, and no apt-get"
        else
            echo "mosquitto not found: apt-get install mosquitto"
            if DEBIAN_FRONTEND=noninteractive timeout 600 apt-get update -qq </dev/null \
                && DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq mosquitto </dev/null; then
                path="$(find_mosquitto)" || why="apt-get installed mosquitto but the binary is not found"
            else
                why="apt-get update && apt-get install mosquitto failed"
            fi
        fi
    fi
    if [[ -z "$path" ]]; then
        echo "broker: mosquitto unavailable (${why}); falling back to the embedded amqtt broker"
        export RECONCILE_TEST_BROKER=amqtt
        unset RECONCILE_MOSQUITTO
        return 0
    fi
    version="$("$path" -h 2>&1 </dev/null | sed -n 's/^mosquitto version \([^ ]*\).*/\1/p' | head -n1 || true)"
    echo "broker: mosquitto ${version:-unknown version} ($path)"
    export RECONCILE_TEST_BROKER=mosquitto
    export RECONCILE_MOSQUITTO="$path"
}

step "set-up: .venv"
ensure_venv
.venv/bin/python --version

step "set-up: MQTT broker for the tests"
ensure_broker

step "ruff check"
.venv/bin/ruff check agent tests bench examples

step "ruff format --check"
.venv/bin/ruff format --check agent tests bench examples

step "mypy (strict on agent/)"
.venv/bin/mypy

step "import contracts (lint-imports)"
.venv/bin/lint-imports

if [[ $# -gt 0 ]]; then
    step "pytest $*"
    .venv/bin/pytest "$@"
else
    step "pytest (not slow)"
    .venv/bin/pytest

    step "pytest -m slow"
    rc=0
    .venv/bin/pytest -m slow || rc=$?
    if [[ $rc -eq 5 ]]; then
        echo "(no slow tests collected)"
    elif [[ $rc -ne 0 ]]; then
        exit "$rc"
    fi
fi

printf '\n%s==> all steps passed (broker: %s)%s\n' "$GREEN" "$RECONCILE_TEST_BROKER" "$RESET"
