# shellcheck shell=bash
# Shared set-up for scripts/test.sh and scripts/run-dev.sh: a project virtualenv in .venv holding exactly
# the versions of requirements/dev.lock (pip --require-hashes: the files PyPI has, byte for byte), then
# the project itself, editable. Re-installed only when the lock or pyproject.toml changed since the last
# install. ./scripts/lock.sh refreshes the lock.
#
# Source it and call `ensure_venv` (from the repository root), or run it directly:
#   bash scripts/_venv.sh
# Idempotent and fast when already set up (one hash comparison). Concurrent runs in the same tree
# are serialised by a lock so two of them never build the venv at once.

VENV_DIR="${VENV_DIR:-.venv}"
VENV_STAMP="$VENV_DIR/.reconcile-install-stamp"
LOCK_FILE="requirements/dev.lock"

_venv_log() { printf '%s\n' "$*" >&2; }

_py_ok() {  # usage: _py_ok PYTHON -> true when it runs and is >= 3.11
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1
}

pick_python() {  # prints the first of python3, python3.13, python3.12, python3.11 that is >= 3.11
    local candidate
    for candidate in python3 python3.13 python3.12 python3.11; do
        if command -v "$candidate" >/dev/null 2>&1 && _py_ok "$candidate"; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

_venv_hash() {
    {
        sha256sum pyproject.toml "$LOCK_FILE"
        "$VENV_DIR/bin/python" -c 'import sys; print(sys.version)'
    } | sha256sum | cut -d' ' -f1
}

_install_venv_package() {  # Debian/Ubuntu ship ensurepip separately (python3.X-venv)
    local py="$1" ver
    ver="$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        _venv_log "venv: '$py -m venv' failed and we cannot install python${ver}-venv (need root and apt-get)"
        return 1
    fi
    _venv_log "venv: installing python${ver}-venv (ensurepip is missing)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null >&2 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python${ver}-venv" </dev/null >&2 \
        || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv </dev/null >&2
}

_ensure_venv_locked() {
    if [[ -x "$VENV_DIR/bin/python" ]] && ! _py_ok "$VENV_DIR/bin/python"; then
        _venv_log "venv: $VENV_DIR is broken or older than Python 3.11; recreating it"
        rm -rf "$VENV_DIR"
    fi
    if [[ ! -x "$VENV_DIR/bin/python" ]]; then
        local py
        if ! py="$(pick_python)"; then
            _venv_log "venv: no Python >= 3.11 found (tried python3, python3.13, python3.12, python3.11)"
            return 1
        fi
        _venv_log "venv: creating $VENV_DIR with $py ($("$py" --version 2>&1))"
        if ! "$py" -m venv "$VENV_DIR" >/dev/null 2>&1; then
            rm -rf "$VENV_DIR"
            _install_venv_package "$py" || return 1
            "$py" -m venv "$VENV_DIR" || return 1
        fi
    fi
    local want
    want="$(_venv_hash)" || return 1
    if [[ -f "$VENV_STAMP" && "$(cat "$VENV_STAMP")" == "$want" ]]; then
        return 0
    fi
    _venv_log "venv: installing $LOCK_FILE and the project (first install, or the lock or pyproject.toml changed)"
    rm -f "$VENV_STAMP"
    local pip=("$VENV_DIR/bin/python" -m pip install --disable-pip-version-check --no-input -q)
    if ! "${pip[@]}" --require-hashes -r "$LOCK_FILE" </dev/null; then
        _venv_log "venv: pip install --require-hashes -r $LOCK_FILE failed"
        return 1
    fi
    # --no-deps: every dependency came from the lock; --no-build-isolation: so did the build backend.
    if ! "${pip[@]}" --no-deps --no-build-isolation -e . </dev/null; then
        _venv_log "venv: pip install --no-deps -e . failed"
        return 1
    fi
    if ! "$VENV_DIR/bin/python" scripts/lock_covers.py; then
        _venv_log "venv: $LOCK_FILE is older than pyproject.toml: run ./scripts/lock.sh (and commit the lock)"
        return 1
    fi
    printf '%s\n' "$want" >"$VENV_STAMP"
}

ensure_venv() {
    local lock rc=0 fd
    if ! command -v flock >/dev/null 2>&1; then
        _ensure_venv_locked
        return
    fi
    lock="${TMPDIR:-/tmp}/reconcile-agent-venv-$(pwd | sha256sum | cut -c1-16).lock"
    exec {fd}>"$lock"
    flock "$fd"
    _ensure_venv_locked || rc=$?
    exec {fd}>&-  # release: the lock only guards the set-up, not the whole test run
    return "$rc"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then  # executed, not sourced
    set -euo pipefail
    cd "$(dirname "${BASH_SOURCE[0]}")/.."
    ensure_venv
fi
