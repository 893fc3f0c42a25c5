#!/usr/bin/env bash
# Installs the tools the tests drive besides the services: Debian's
# headless `chromium` (the backtest report is rendered in it) and a Python
# virtualenv with scipy (tests/backtest_fixtures.py computes the backtest
# statistics independently with it). Prints the venv's python, which
# tests/run.sh exports as RISKHOST_TEST_PYTHON. Installs nothing present.
set -euo pipefail

SCIPY_VERSION=1.14.1

if ! command -v chromium >/dev/null 2>&1; then
    echo "installing chromium (Debian package)" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

venv="${XDG_CACHE_HOME:-$HOME/.cache}/riskhost/test-python-scipy-$SCIPY_VERSION"
if ! "$venv/bin/python" -c 'import scipy' >/dev/null 2>&1; then
    echo "installing scipy $SCIPY_VERSION into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "scipy==$SCIPY_VERSION" >&2
fi
echo "$venv/bin/python"
