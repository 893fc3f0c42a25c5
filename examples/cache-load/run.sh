#!/usr/bin/env bash
# Load test of the memo (not a CI test: the numbers depend on the machine).
# With wrk at 64 connections for 10 s each, against a release build:
#   1. the ceiling: GET /healthz (a trivial axum JSON route);
#   2. L1 hits: one score request, memoized in process;
#   3. L2 hits: the same against a replica whose in-process tier holds
#      nothing (--cache-max-mib 0), so every request is an MGET hit;
#   4. misses: a new portfolio per request (model call + Redis write), with
#      the shared tier and without it;
# then a replayed Zipf workload over 1,000 portfolios across two replicas,
# with and without the shared tier, for the hit rate.
#
#   examples/cache-load/run.sh            # builds target/release/riskhost first
#   RISKHOST_BIN=/path/riskhost DURATION=5s examples/cache-load/run.sh
#
# Starts its own redis-server on a free loopback port; stops everything it
# started on exit. Needs wrk (apt-get install -y wrk), redis-server, python3.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
MODEL=${MODEL:-var-historical}
ZIPF_REQUESTS=${ZIPF_REQUESTS:-20000}
if [ -z "${RISKHOST_BIN:-}" ]; then
    cargo build --release --quiet -p riskhost
    RISKHOST_BIN="${CARGO_TARGET_DIR:-target}/release/riskhost"
fi
command -v wrk >/dev/null || { echo "needs wrk: apt-get install -y wrk" >&2; exit 1; }
[ -f plugins/dist/var-historical.wasm ] || plugins/build.sh

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

bench() { # TITLE URL [MODE]
    local title=$1 url=$2 mode=${3:-}
    echo "== $title"
    if [ -z "$mode" ]; then
        wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$url/healthz" |
            grep -E 'Requests/sec|^ +(50|99)%'
    else
        MODE=$mode MODEL=$MODEL wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency \
            -s examples/cache-load/score.lua "$url/v1/score" |
            grep -E 'Requests/sec|^ +(50|99)%|answers'
    fi
}

warm() { # URL: one request, so the fixed body is memoized
    curl -fs "$1/v1/score" -H 'content-type: application/json' -d "{\"model\":\"$MODEL\",\"portfolio\":{\"positions\":[{\"instrument\":\"SPX\",\"quantity\":10},{\"instrument\":\"TLT\",\"quantity\":-200},{\"instrument\":\"AAPL\",\"quantity\":50},{\"instrument\":\"GOLD\",\"quantity\":30},{\"instrument\":\"EURUSD\",\"quantity\":10000}]}}" >/dev/null
}

start tiered --redis-url "$redis" --redis-prefix load-a
start noL1 --redis-url "$redis" --redis-prefix load-a --cache-max-mib 0
start local

echo "riskhost $("$RISKHOST_BIN" --version), wrk -t$THREADS -c$CONNS -d$DURATION, model $MODEL, $(nproc) cores"
bench "ceiling: GET /healthz" "$url_tiered"
warm "$url_tiered"
bench "L1 hit (in-process tier)" "$url_tiered" fixed
bench "L2 hit (Redis MGET; in-process tier disabled)" "$url_noL1" fixed
bench "miss with the shared tier (model call + Redis SET)" "$url_tiered" unique
bench "miss, in-process tier only (model call)" "$url_local" unique

echo "== Zipf replay, $ZIPF_REQUESTS requests over 1,000 portfolios, round-robin over 2 replicas"
start zipf1 --redis-url "$redis" --redis-prefix load-zipf
start zipf2 --redis-url "$redis" --redis-prefix load-zipf
start solo1
start solo2
echo -n "shared tier:      "
python3 examples/cache-load/zipf.py --servers "$url_zipf1,$url_zipf2" --requests "$ZIPF_REQUESTS" --model "$MODEL"
echo -n "in-process only:  "
python3 examples/cache-load/zipf.py --servers "$url_solo1,$url_solo2" --requests "$ZIPF_REQUESTS" --model "$MODEL"
