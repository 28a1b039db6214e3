# Sourced (not run) by test.sh, demo.sh and .ci/run: one virtual environment for all.
#
#   ensure_venv EXTRA[,EXTRA...]   # e.g. ensure_venv test,docs
#
# Creates "$VENV" (default: .venv in the repository root) if it is missing, installs
# this package in editable mode with the given extras of pyproject.toml, and puts the
# environment's bin/ first on PATH. An install is skipped when pyproject.toml has not
# changed since the same extra was last installed into this environment (a stamp per
# extra, under "$VENV/.stamps"), so reruns start in seconds. Source edits need no
# reinstall: the install is editable.
#
# Environment: PYTHON (default python3, must be >= 3.11), VENV.

export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_NO_INPUT=1
export PIP_PROGRESS_BAR=off

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO_ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

section() {
    printf '\n==== %s ====\n' "$*"
}

# pip, quiet: its output is shown only on failure, else just its warnings and errors
# (less the noise about configured package locations that do not exist).
_pip() {
    local log status=0
    log="$(mktemp)"
    "$VENV/bin/python" -m pip "$@" >"$log" 2>&1 || status=$?
    if [ "$status" -ne 0 ]; then
        cat "$log" >&2
        echo "error: pip $* failed (exit code $status)" >&2
    else
        grep -v -e 'is ignored: it is neither a file nor a directory' "$log" || true
    fi
    rm -f "$log"
    return "$status"
}

_make_venv() {
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
        echo "error: '$PYTHON' not found; install Python >= 3.11 or set PYTHON=..." >&2
        return 1
    fi
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "error: $("$PYTHON" --version 2>&1) is too old; need Python >= 3.11" \
            "(set PYTHON=python3.11 or newer)." >&2
        return 1
    fi
    echo "creating virtual environment $VENV with $("$PYTHON" --version 2>&1)"
    if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
        # Some distributions ship Python without ensurepip (Debian's python3-venv).
        echo "python -m venv failed; falling back to virtualenv from PyPI"
        rm -rf "$VENV"
        local tmp
        tmp="$(mktemp -d)"
        "$PYTHON" -m pip install --quiet --target "$tmp" virtualenv
        PYTHONPATH="$tmp" "$PYTHON" -m virtualenv --quiet "$VENV"
        rm -rf "$tmp"
    fi
    _pip install --quiet --upgrade pip
}

ensure_venv() {
    local extras="${1:-}"
    if [ ! -x "$VENV/bin/python" ]; then
        _make_venv
    fi
    local hash missing=() extra
    hash="$("$VENV/bin/python" -c 'import hashlib, sys
print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' \
        "$REPO_ROOT/pyproject.toml")"
    mkdir -p "$VENV/.stamps"
    for extra in ${extras//,/ } base; do
        if [ "$(cat "$VENV/.stamps/$extra" 2>/dev/null)" != "$hash" ]; then
            missing+=("$extra")
        fi
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        local spec="$REPO_ROOT"
        if [ -n "$extras" ]; then
            spec="$REPO_ROOT[$extras]"
        fi
        echo "installing invertible (editable) with extras [${extras}] into $VENV"
        # --no-compile: pip would byte-compile every module of every package (half
        # of a fresh install's time: 58 s against 30 s here); Python compiles the
        # ones a run imports, once, when it first imports them (about 9 s). Not
        # where Python writes no bytecode: every process would compile them again.
        local compile=(--no-compile)
        if [ -n "${PYTHONDONTWRITEBYTECODE:-}" ]; then
            compile=()
        fi
        _pip install --quiet ${compile[@]+"${compile[@]}"} --editable "$spec"
        for extra in ${extras//,/ } base; do
            echo "$hash" >"$VENV/.stamps/$extra"
        done
    else
        echo "$VENV is up to date with pyproject.toml [${extras}]"
    fi
    export VIRTUAL_ENV="$VENV"
    export PATH="$VENV/bin:$PATH"
}
