#!/usr/bin/env bash
# Refresh requirements/dev.lock: every package the project, its dev extra and its build backend need,
# pinned with the sha256 of each file on PyPI, for every Python >= requires-python and every platform.
# scripts/_venv.sh installs exactly that (pip --require-hashes); pyproject.toml keeps the ranges that
# `pip install reconcile-agent` resolves for users.
#
#   ./scripts/lock.sh                      after a change to pyproject.toml: keeps every pin it can
#   ./scripts/lock.sh --upgrade            the newest versions the ranges allow
#   ./scripts/lock.sh --upgrade-package X  just X
#
# The resolver is uv (pinned below), run from a venv of its own outside the project's .venv. It reads no
# pip or uv configuration and asks PyPI only, so a local mirror or wheel directory never puts its own
# hashes in the lock.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/_venv.sh
source scripts/_venv.sh

UV_VERSION="0.13.8"
TOOLS="${XDG_CACHE_HOME:-$HOME/.cache}/reconcile-agent/uv-$UV_VERSION"
py="$(pick_python)" || { echo "lock: no Python >= 3.11 found" >&2; exit 1; }

if [[ ! -x "$TOOLS/bin/uv" ]]; then
    echo "lock: installing uv $UV_VERSION into $TOOLS" >&2
    rm -rf "$TOOLS"
    "$py" -m venv "$TOOLS"
    "$TOOLS/bin/python" -m pip install --disable-pip-version-check --no-input -q "uv==$UV_VERSION"
fi

mkdir -p "$(dirname "$LOCK_FILE")"
pyproject() {  # usage: pyproject EXPRESSION -> its value, with `project` the parsed pyproject.toml
    "$py" -c 'import sys, tomllib; project = tomllib.load(open("pyproject.toml", "rb")); print(eval(sys.argv[1]))' "$1"
}
min_python="$(pyproject 'project["project"]["requires-python"].strip().removeprefix(">=")')"
# The build backend ([build-system] requires) is locked too: _venv.sh installs the project with
# --no-build-isolation, so nothing unpinned is fetched to build it. On stdin, so the lock names no temp file.
pyproject '"\n".join(project["build-system"]["requires"])' | "$TOOLS/bin/uv" pip compile \
    --no-config \
    --index-url https://pypi.org/simple \
    --universal \
    --python-version "$min_python" \
    --generate-hashes \
    --extra dev \
    --custom-compile-command "./scripts/lock.sh" \
    --output-file "$LOCK_FILE" \
    --quiet \
    "$@" \
    pyproject.toml -
echo "lock: wrote $LOCK_FILE ($(grep -c '^[A-Za-z0-9]' "$LOCK_FILE") packages)" >&2
