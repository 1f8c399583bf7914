#!/usr/bin/env bash
# THE test command (CI runs exactly this via .ci/run).
#
#   ./scripts/test.sh                  lint, type-check, import contracts, tests, then the slow tests
#   ./scripts/test.sh tests/unit -x    same checks, then pytest with these args only (no slow step)
#
# On a fresh Debian/Ubuntu with Python >= 3.11 it sets itself up: .venv (requirements/dev.lock with
# --require-hashes, then the project; repeated only when the lock or pyproject.toml changes) and, when
# root, every program the tests run (apt-get: mosquitto, openssl, systemd, ...; tests/support/programs.py).
# Without mosquitto the tests use the embedded amqtt broker, and say so. RECONCILE_TEST_BROKER=amqtt
# forces the fallback: `RECONCILE_TEST_BROKER=amqtt ./scripts/test.sh` is the suite as a user without
# root gets it. It is not a step of this command: it takes as long again as the mosquitto run (about
# 4 min more on 2 cores), which would put the whole command near 10 min.
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

# Installs, as root with apt-get, the Debian packages of every program the tests run that is missing
# (the registry is tests/support/programs.py), so that no test skips for a missing program. Elsewhere it
# says which are missing: the tests that need them skip, naming them (under CI=true they fail).
ensure_programs() {
    local missing
    missing="$(.venv/bin/python -m tests.support.programs missing-packages)"
    if [[ -z "$missing" ]]; then
        echo "programs: all installed"
        return 0
    fi
    if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        echo "programs: missing packages: $missing (not root with apt-get to install them)"
        echo "          the tests that need them skip, naming them; CI=true makes that a failure"
        return 0
    fi
    echo "programs: apt-get install $missing"
    # A fresh machine has no package lists yet; an old list may name versions the mirror no longer has.
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get update -qq </dev/null \
        || echo "programs: apt-get update failed; trying the install with the lists there are"
    # shellcheck disable=SC2086  # one word per package
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends $missing </dev/null \
        || echo "programs: apt-get install failed"
    missing="$(.venv/bin/python -m tests.support.programs missing-packages)"
    if [[ -n "$missing" ]]; then
        echo "programs: still missing: $missing; the tests that need them skip (CI=true: fail)"
    fi
}

# Sets RECONCILE_TEST_BROKER (and RECONCILE_MOSQUITTO) and prints which broker the tests use.
ensure_broker() {
    local path version
    if [[ "${RECONCILE_TEST_BROKER:-}" == "amqtt" ]]; then
        echo "broker: amqtt (embedded, RECONCILE_TEST_BROKER=amqtt set by the caller)"
        export RECONCILE_TEST_BROKER=amqtt
        return 0
    fi
    if ! path="$(.venv/bin/python -c 'from tests.support.broker import find_mosquitto; print(find_mosquitto() or "")')" \
        || [[ -z "$path" ]]; then
        echo "broker: mosquitto unavailable; falling back to the embedded amqtt broker"
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

step "set-up: programs the tests run (tests/support/programs.py)"
ensure_programs

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

    step "pytest -m slow (scale tests: ./scripts/test.sh -m scale)"
    rc=0
    .venv/bin/pytest -m "slow and not scale" || rc=$?
    if [[ $rc -eq 5 ]]; then
        echo "(no slow tests collected)"
    elif [[ $rc -ne 0 ]]; then
        exit "$rc"
    fi
fi

printf '\n%s==> all steps passed (broker: %s)%s\n' "$GREEN" "$RECONCILE_TEST_BROKER" "$RESET"
