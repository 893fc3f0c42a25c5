#!/usr/bin/env bash
# Builds app.py into a WebAssembly component: dist/{{name}}.wasm.
#
# Uses componentize-py {{componentize_py_version}} from PyPI: when that version is not on
# PATH it is installed once into a virtualenv under ~/.cache/riskhost
# (override with RISKHOST_PY_VENV), so only python3 with venv and pip is needed.
set -euo pipefail
cd "$(dirname "$0")"

COMPONENTIZE_PY_VERSION={{componentize_py_version}}

componentize_py() {
    if command -v componentize-py >/dev/null 2>&1 &&
        [ "$(componentize-py --version 2>/dev/null)" = "componentize-py $COMPONENTIZE_PY_VERSION" ]; then
        command componentize-py "$@"
        return
    fi
    local venv="${RISKHOST_PY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/riskhost/componentize-py-$COMPONENTIZE_PY_VERSION}"
    if [ ! -x "$venv/bin/componentize-py" ]; then
        echo "installing componentize-py $COMPONENTIZE_PY_VERSION into $venv" >&2
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION"
    fi
    "$venv/bin/componentize-py" "$@"
}

mkdir -p dist
componentize_py -d wit -w model componentize app -o "dist/.{{name}}.wasm.tmp" >/dev/null
mv "dist/.{{name}}.wasm.tmp" "dist/{{name}}.wasm"
echo "built dist/{{name}}.wasm ($(wc -c <"dist/{{name}}.wasm") bytes)"
