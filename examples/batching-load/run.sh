#!/usr/bin/env bash
# Load test of batching (not a CI test: numbers depend on the machine).
#   1. 10,000 portfolios × 3 models (20 positions each from the bundled
#      instruments, 250-day lookback, all cache misses) through the batch
#      engine (`score-file`, 1,000 portfolios per batch) against the same
#      work one portfolio per batch (what single requests cost the engine,
#      without HTTP);
#   2. dynamic batching on (default) vs off (--dynamic-batch-max 1): wrk at
#      64 connections, every request a new portfolio (a cache miss).
#
#   examples/batching-load/run.sh                 # uses target/release/riskhost
#   RISKHOST_BIN=/path/riskhost DURATION=10s examples/batching-load/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${RISKHOST_BIN:-${CARGO_TARGET_DIR:-target}/release/riskhost}"
DURATION="${DURATION:-10s}"
[ -x "$BIN" ] || cargo build --release -q -p riskhost
command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT

python3 - "$work/portfolios.jsonl" <<'PY'
import json, random, sys
names = ["SPX","NDX","SX5E","NKY","UKX","HSI","AAPL","MSFT","JPM","XOM","NVDA","TSLA",
         "TLT","IEF","LQD","HYG","EURUSD","USDJPY","GBPUSD","GOLD","WTI","COPPER","BTCUSD","AMZN"]
rng = random.Random(7)
with open(sys.argv[1], "w") as f:
    for i in range(10_000):
        picks = rng.sample(names, 20)
        f.write(json.dumps({"id": f"p{i}", "positions": [
            {"instrument": n, "quantity": rng.choice([-1, 1]) * rng.randint(1, 500)} for n in picks]}) + "\n")
PY
echo "== batch engine: 10,000 portfolios x 3 models"
for batch in 1000 1; do
    echo "-- --batch $batch"
    RUST_LOG=warn "$BIN" score-file "$work/portfolios.jsonl" --quiet --batch "$batch" \
        --models var-historical,var-parametric,es-historical --param lookback_days=250 \
        --plugins plugins/dist --out "$work/out-$batch.csv"
done

echo "== dynamic batching, 64 connections, cache misses ($DURATION)"
for max in 64 1; do
    RUST_LOG=warn "$BIN" serve --listen 127.0.0.1:0 --plugins plugins/dist --data-dir "$work/data-$max" \
        --watch false --dynamic-batch-max "$max" \
        --anonymous-scoring --rate-limit-per-minute 0 --max-concurrent-requests 100000 > "$work/serve-$max.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 200); do url=$(sed -n 's/^riskhost listening on //p' "$work/serve-$max.log"); [ -n "$url" ] && break; sleep 0.05; done
    for _ in $(seq 1 200); do curl -fs "$url/readyz" >/dev/null && break; sleep 0.05; done
    echo "-- --dynamic-batch-max $max"
    MODE=unique wrk -t2 -c64 -d"$DURATION" --latency -s examples/cache-load/score.lua "$url/v1/score" \
        | grep -E "Requests/sec|50%|99%|Non-2xx|Socket errors|ok=" || true
    kill $pid; wait $pid 2>/dev/null || true
done
