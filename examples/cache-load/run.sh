#!/usr/bin/env bash
# Hit rate of the memo (not a timing, and not a CI test): replays a seeded
# Zipf workload over 1,000 portfolios round-robin across two replicas, once
# sharing a Redis tier and once with in-process tiers only, and prints the
# hit rate by tier. Throughput and latency of the memo's paths (L1 hit, L2
# hit, miss) are measured by `cargo xtask bench` (BENCHMARKS.md, scenario 3).
#
#   examples/cache-load/run.sh            # builds target/release/riskhost first
#   RISKHOST_BIN=/path/riskhost ZIPF_REQUESTS=5000 examples/cache-load/run.sh
#
# Starts its own redis-server on a free loopback port; stops everything it
# started on exit. Needs redis-server, curl and python3.
set -euo pipefail
cd "$(dirname "$0")/../.."

MODEL=${MODEL:-var-historical}
ZIPF_REQUESTS=${ZIPF_REQUESTS:-20000}
if [ -z "${RISKHOST_BIN:-}" ]; then
    cargo build --release --quiet -p riskhost
    RISKHOST_BIN="${CARGO_TARGET_DIR:-target}/release/riskhost"
fi
[ -f plugins/dist/var-historical.wasm ] || plugins/build.sh
# With API keys, scoring needs a key or this flag (older builds lack it).

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize no >"$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done
redis="redis://127.0.0.1:$redis_port/"

# start NAME FLAGS...: starts a replica, waits until ready, sets $url_NAME.
start() {
    local name=$1
    shift
    # Each replica has its own model store (one process per data dir).
    RUST_LOG=warn "$RISKHOST_BIN" serve --listen 127.0.0.1:0 --plugins plugins/dist \
        --data-dir "$work/data-$name" --watch false \
        --anonymous-scoring --rate-limit-per-minute 0 --max-concurrent-requests 100000 "$@" \
        >"$work/$name.out" 2>"$work/$name.err" &
    pids+=($!)
    local url=""
    for _ in $(seq 1 600); do
        url=$(sed -n 's/^riskhost listening on //p' "$work/$name.out")
        [ -n "$url" ] && curl -fs "$url/readyz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    [ -n "$url" ] || { cat "$work/$name.err" >&2; exit 1; }
    printf -v "url_$name" '%s' "$url"
}

echo "== Zipf replay, $ZIPF_REQUESTS requests over 1,000 portfolios, round-robin over 2 replicas"
start zipf1 --redis-url "$redis" --redis-prefix load-zipf
start zipf2 --redis-url "$redis" --redis-prefix load-zipf
start solo1
start solo2
echo -n "shared tier:      "
python3 examples/cache-load/zipf.py --servers "$url_zipf1,$url_zipf2" --requests "$ZIPF_REQUESTS" --model "$MODEL"
echo -n "in-process only:  "
python3 examples/cache-load/zipf.py --servers "$url_solo1,$url_solo2" --requests "$ZIPF_REQUESTS" --model "$MODEL"
