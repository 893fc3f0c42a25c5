#!/usr/bin/env bash
# Builds the Python example models (examples/python/*/app.py) into WebAssembly
# components in examples/python/dist/<model>.wasm with componentize-py.
#
# componentize-py comes from PyPI. When the pinned version is not on PATH it
# is installed once into a virtualenv under ~/.cache/riskhost (override the
# place with RISKHOST_PY_VENV), so a fresh machine needs only python3 with
# venv and pip. Each .wasm is published by atomic rename, so a server
# watching the directory never sees a half-written file.
set -euo pipefail
cd "$(dirname "$0")"

COMPONENTIZE_PY_VERSION=0.25.1
WIT=../../wit

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
for app in */app.py; do
    model="$(dirname "$app")"
    # -p: where app.py lives; the component is named after its directory.
    componentize_py -d "$WIT" -w model componentize -p "$model" app -o "dist/.$model.wasm.tmp" >/dev/null
    mv "dist/.$model.wasm.tmp" "dist/$model.wasm"
    echo "built examples/python/dist/$model.wasm ($(wc -c <"dist/$model.wasm") bytes)"
done
