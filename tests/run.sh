#!/usr/bin/env bash
# Runs every test of riskhost on a fresh machine: installs what is missing,
# builds the models once, then formats-checks, lints and tests the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2 >/dev/null 2>&1 || rustup target add wasm32-wasip2
if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install --locked cargo-nextest
fi

tests/services.sh
tests/clickhouse.sh
RISKHOST_TEST_PYTHON="$(tests/tools.sh)"
export RISKHOST_TEST_PYTHON
plugins/build.sh
examples/python/build.sh
tests/plugins/build.sh

cargo fmt --all --check
deploy/validate.sh
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo nextest run --workspace --no-fail-fast
