#!/usr/bin/env bash
# One entry point for a fresh Debian/Ubuntu machine with Python 3.11:
#   ./dev.sh demo   create .venv, install plantdx, run the end-to-end demo
#   ./dev.sh test   create .venv, install plantdx + test tools, lint, type-check, run the tests
#   ./dev.sh setup  only create .venv and install
set -euo pipefail
cd "$(dirname "$0")"

# Python 3.11 (the version the pins are resolved for); set PYTHON to choose another.
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3 || true)}"
VENV=.venv

setup() {
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
    # Reinstall only when the dependency list changed (a full install is ~4 min, ~7 GB).
    local stamp="$VENV/.plantdx-installed" want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$VENV/bin/python" -c "import plantdx" 2>/dev/null; then
        echo "==> installing plantdx and its dependencies into $VENV (first time: about 4 minutes)"
        "$VENV/bin/python" -m pip install --quiet --upgrade pip
        "$VENV/bin/python" -m pip install --quiet -e ".[dev]"
        echo "$want" > "$stamp"
    fi
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
        setup
        ;;
    demo)
        shift
        setup
        exec "$VENV/bin/plantdx" demo "$@"
        ;;
    test)
        shift
        setup
        system_tools
        echo "==> ruff"
        "$VENV/bin/ruff" check .
        "$VENV/bin/ruff" format --check .
        echo "==> mypy"
        "$VENV/bin/mypy"
        echo "==> pytest"
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    *)
        echo "usage: ./dev.sh demo [demo options] | test [pytest options] | setup" >&2
        exit 2
        ;;
esac
