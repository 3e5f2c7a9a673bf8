#!/usr/bin/env bash
# One entry point for a fresh Debian/Ubuntu machine with Python 3.11:
#   ./dev.sh demo   create .venv, install plantdx[serve,train], run the end-to-end demo
#   ./dev.sh test   create .venv, install plantdx[dev] (everything + test tools), lint,
#                   type-check, run the tests
#   ./dev.sh setup  only create .venv and install plantdx[dev]
# Installs the pinned, hash-checked set in requirements/<demo|dev>.lock (resolved from
# pyproject.toml's ranges by requirements/compile.sh), then plantdx itself without dependencies.
set -euo pipefail
cd "$(dirname "$0")"

# Python 3.11 (the version the pins are resolved for); set PYTHON to choose another.
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3 || true)}"
VENV=.venv

# installed LOCK: the venv holds LOCK's set for this pyproject.toml (one line per lock in the stamp).
installed() {
    local want
    want="$1 $(cat pyproject.toml "requirements/$1.lock" | sha256sum | cut -d' ' -f1)"
    grep -qxF "$want" "$VENV/.plantdx-installed" 2>/dev/null
}

setup() {  # setup LOCK (dev: everything; demo: serve + train)
    local lock="${1:-dev}"
    if [ -z "$PYTHON" ]; then
        echo "error: no python3 found; install Python 3.11 (apt-get install python3.11)" >&2
        exit 1
    fi
    # A venv left half-made by a failed attempt (no pip in it) is made again.
    if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        echo "==> $VENV has no pip (an earlier attempt failed): recreating it"
        rm -rf "$VENV"
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        echo "==> creating $VENV with $("$PYTHON" --version)"
        if ! "$PYTHON" -m venv "$VENV"; then
            rm -rf "$VENV"
            echo "error: '$PYTHON -m venv' failed. On Debian/Ubuntu install the venv module:" >&2
            echo "  sudo apt-get install python3-venv   (or python3.11-venv)" >&2
            exit 1
        fi
    fi
    # Reinstall only when the lock or pyproject.toml changed (dev: ~4 min, ~7 GB the first
    # time). The dev set holds the demo's, so a venv set up for the tests serves the demo too.
    if installed "$lock" || { [ "$lock" = demo ] && installed dev; }; then
        "$VENV/bin/python" -c "import plantdx" 2>/dev/null && return 0
    fi
    echo "==> installing requirements/$lock.lock and plantdx into $VENV (first time: about 4 minutes)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet --require-hashes -r "requirements/$lock.lock"
    # setuptools says at every editable install of a package-dir layout like this one that it
    # uses an import hook ("Editable installation.", for information only): not a warning.
    PYTHONWARNINGS="ignore:Editable installation" "$VENV/bin/python" -m pip install --quiet --no-deps -e .
    "$VENV/bin/python" -m pip check >/dev/null || { "$VENV/bin/python" -m pip check; exit 1; }
    local line
    line="$lock $(cat pyproject.toml "requirements/$lock.lock" | sha256sum | cut -d' ' -f1)"
    { grep -v "^$lock " "$VENV/.plantdx-installed" 2>/dev/null || true; echo "$line"; } \
        > "$VENV/.plantdx-installed.new"
    mv "$VENV/.plantdx-installed.new" "$VENV/.plantdx-installed"
}

system_tools() {
    # Real Prometheus (and promtool) for the metrics and alert-rule tests.
    if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
        local sudo=""
        [ "$(id -u)" -ne 0 ] && sudo="sudo"
        if command -v apt-get >/dev/null; then
            echo "==> installing Debian's prometheus (for promtool and the scrape test)"
            $sudo apt-get update -qq >/dev/null || true
            # Don't let the package start a system service: the tests run their own.
            printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
            $sudo chmod +x /usr/sbin/policy-rc.d
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq prometheus >/dev/null || \
                echo "warning: could not install prometheus; its tests will be skipped"
            $sudo rm -f /usr/sbin/policy-rc.d
        fi
    fi
}

case "${1:-}" in
    setup)
        setup dev
        ;;
    demo)
        shift
        setup demo
        exec "$VENV/bin/plantdx" demo "$@"
        ;;
    test)
        shift
        setup dev
        system_tools
        echo "==> ruff"
        "$VENV/bin/ruff" check .
        "$VENV/bin/ruff" format --check .
        echo "==> mypy (the package as imported: scripts/typecheck.py)"
        "$VENV/bin/python" scripts/typecheck.py
        echo "==> pytest"
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    *)
        echo "usage: ./dev.sh demo [demo options] | test [pytest options] | setup" >&2
        exit 2
        ;;
esac
