#!/usr/bin/env bash
# The main job on a fresh machine: builds riskhost and the example models,
# starts the server on embedded defaults (bundled market data, in-process
# cache), prints the loaded models and a sample score, and keeps serving
# until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

LISTEN="${RISKHOST_LISTEN:-127.0.0.1:8080}"

step() { printf '\n== %s\n' "$*"; }

step "Installing the wasm32-wasip2 target (once)"
rustup target add wasm32-wasip2 >/dev/null 2>&1 || rustup target add wasm32-wasip2

if [ -x target/release/riskhost ] && [ -f plugins/dist/var-historical.wasm ]; then
    step "Checking the build (a second run takes seconds: only what changed is rebuilt)"
else
    step "First build: riskhost and its wasmtime/Cranelift engine, about 10–12 minutes on 2 cores (a second run takes seconds)"
fi
step "Building the example models (plugins/build.sh: three small Rust components)"
plugins/build.sh
step "Building riskhost (cargo build --release -p riskhost)"
# Not --quiet: cargo's progress (a bar on a terminal, a line per crate
# otherwise) shows that a long first build moves.
cargo build --release -p riskhost
step "Starting riskhost on http://$LISTEN with the example models and the bundled market data"

# --anonymous-scoring: this local run scores without API keys (it says so
# loudly at start-up); a real deployment creates keys with `riskhost key new`.
target/release/riskhost serve --listen "$LISTEN" --plugins plugins/dist --anonymous-scoring &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT INT TERM

for _ in $(seq 1 300); do
    if curl -fsS "http://$LISTEN/readyz" >/dev/null 2>&1; then break; fi
    if ! kill -0 $server 2>/dev/null; then echo "riskhost exited" >&2; exit 1; fi
    sleep 0.1
done

echo
echo "== GET /v1/models"
curl -fsS "http://$LISTEN/v1/models" | python3 -c '
import json, sys
for m in json.load(sys.stdin)["models"]:
    print("  %-16s %-8s %s..." % (m["name"], m["version"], m["digest"][:23]))'
echo
echo "== POST /v1/score (99% 1-day historical VaR of examples/portfolios/balanced.json)"
curl -fsS "http://$LISTEN/v1/score" -H 'content-type: application/json' \
    -d "{\"model\": \"var-historical\", \"portfolio\": $(cat examples/portfolios/balanced.json), \"params\": {\"confidence\": 0.99}}" \
    | python3 -m json.tool
echo
echo "riskhost is serving on http://$LISTEN (Ctrl-C to stop)"
wait $server
