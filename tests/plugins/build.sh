#!/usr/bin/env bash
# Builds every test model under tests/plugins/*/ (hostile, variant and
# fixture models) to a component in tests/plugins/dist/<crate-name>.wasm.
# The integration tests load them from there; tests/run.sh runs this once.
set -euo pipefail
cd "$(dirname "$0")/../.."

crates=()
for manifest in tests/plugins/*/Cargo.toml; do
    [ -e "$manifest" ] || continue
    crates+=("$(sed -n 's/^name = "\(.*\)"/\1/p' "$manifest" | head -n 1)")
done
[ ${#crates[@]} -gt 0 ] || exit 0

args=()
for c in "${crates[@]}"; do args+=(-p "$c"); done
cargo build --quiet --profile plugin --target wasm32-wasip2 "${args[@]}"

mkdir -p tests/plugins/dist
for c in "${crates[@]}"; do
    src="${CARGO_TARGET_DIR:-target}/wasm32-wasip2/plugin/${c//-/_}.wasm"
    cp "$src" "tests/plugins/dist/.$c.wasm.tmp"
    mv "tests/plugins/dist/.$c.wasm.tmp" "tests/plugins/dist/$c.wasm"
done
echo "built ${#crates[@]} test models into tests/plugins/dist/"
