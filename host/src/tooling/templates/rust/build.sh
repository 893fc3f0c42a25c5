#!/usr/bin/env bash
# Builds the model into a WebAssembly component: dist/{{name}}.wasm.
# Needs a Rust toolchain (rustup); rust-toolchain.toml brings the
# wasm32-wasip2 target.
set -euo pipefail
cd "$(dirname "$0")"
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
cargo build --release --target wasm32-wasip2
mkdir -p dist
cp "${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release/{{crate}}.wasm" "dist/.{{name}}.wasm.tmp"
mv "dist/.{{name}}.wasm.tmp" "dist/{{name}}.wasm"
echo "built dist/{{name}}.wasm ($(wc -c <"dist/{{name}}.wasm") bytes)"
