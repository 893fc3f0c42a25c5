#!/usr/bin/env bash
# Start-up time to ready (/readyz 200) with the example models: a cold start
# (empty model store: every component compiled), a restart that loads the
# compiled artifacts from the store, and a restart with the artifact cache
# off. Not a CI test: the numbers depend on the machine.
#   RISKHOST_BIN=target/release/riskhost RUNS=5 examples/startup/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${RISKHOST_BIN:-${CARGO_TARGET_DIR:-target}/release/riskhost}"
RUNS="${RUNS:-5}"
[ -x "$BIN" ] || cargo build --release -q -p riskhost
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT

# time_to_ready DATA_DIR FLAGS...: prints milliseconds from exec to /readyz.
time_to_ready() {
    local dir=$1; shift
    local start end url=""
    start=$(date +%s%N)
    RUST_LOG=warn "$BIN" serve --listen 127.0.0.1:0 --plugins plugins/dist --watch false \
        --data-dir "$dir" --anonymous-scoring "$@" > "$work/out" 2>&1 &
    local pid=$!
    until [ -n "$url" ] && curl -fs "$url/readyz" >/dev/null 2>&1; do
        url=$(sed -n 's/^riskhost listening on //p' "$work/out"); sleep 0.005
    done
    end=$(date +%s%N)
    kill $pid; wait $pid 2>/dev/null || true
    echo $(( (end - start) / 1000000 ))
}

for scenario in cold cached no-cache; do
    times=()
    for i in $(seq 1 "$RUNS"); do
        case $scenario in
            cold) times+=("$(time_to_ready "$work/cold-$i")") ;;
            cached) [ -d "$work/warm" ] || time_to_ready "$work/warm" >/dev/null
                    times+=("$(time_to_ready "$work/warm")") ;;
            no-cache) [ -d "$work/nocache" ] || time_to_ready "$work/nocache" >/dev/null
                      times+=("$(time_to_ready "$work/nocache" --artifact-cache false)") ;;
        esac
    done
    sorted=$(printf '%s\n' "${times[@]}" | sort -n | tr '\n' ' ')
    echo "$scenario: ms to ready over $RUNS runs (sorted): $sorted"
done
