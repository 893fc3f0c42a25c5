#!/usr/bin/env bash
# Builds the example models to wasm32-wasip2 components and publishes them in
# plugins/dist/ (the default --plugins directory), each by atomic rename so a
# watching server never sees a half-written file.
set -euo pipefail
cd "$(dirname "$0")/.."

MODELS=(var-historical var-parametric es-historical)

rustup target add wasm32-wasip2 >/dev/null 2>&1 || rustup target add wasm32-wasip2
args=()
for m in "${MODELS[@]}"; do args+=(-p "$m"); done
cargo build --quiet --profile plugin --target wasm32-wasip2 "${args[@]}"

mkdir -p plugins/dist
for m in "${MODELS[@]}"; do
    src="${CARGO_TARGET_DIR:-target}/wasm32-wasip2/plugin/${m//-/_}.wasm"
    cp "$src" "plugins/dist/.$m.wasm.tmp"
    mv "plugins/dist/.$m.wasm.tmp" "plugins/dist/$m.wasm"
done
ls -l plugins/dist/*.wasm | awk '{print "built " $NF " (" $5 " bytes)"}'
