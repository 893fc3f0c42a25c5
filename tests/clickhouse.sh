#!/usr/bin/env bash
# Makes sure a ClickHouse server answers on loopback for the tests (and for
# local runs of riskhost with --clickhouse-url). Installs Debian's
# clickhouse-server if it is missing and starts it in the background with
# deploy/clickhouse/config.xml, every path moved under $CH_DIR. Idempotent:
# an instance already answering on the port is left alone.
#
#   CH_DIR        data, logs and rendered config   (/tmp/riskhost-clickhouse)
#   CH_HTTP_PORT  HTTP interface                   (8123)
#   CH_TCP_PORT   native protocol                  (9000)
#
# The fault-injection tests run it with their own folder and ports to get a
# dedicated instance they may stop; its pid is in $CH_DIR/clickhouse.pid.
set -euo pipefail
cd "$(dirname "$0")/.."

CH_DIR="${CH_DIR:-/tmp/riskhost-clickhouse}"
CH_HTTP_PORT="${CH_HTTP_PORT:-8123}"
CH_TCP_PORT="${CH_TCP_PORT:-9000}"

ping() { [ "$(curl -s --max-time 2 "http://127.0.0.1:$CH_HTTP_PORT/ping" 2>/dev/null)" = "Ok." ]; }

if ping; then
    exit 0
fi

if ! command -v clickhouse-server >/dev/null 2>&1; then
    echo "installing clickhouse-server (Debian package)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq clickhouse-server clickhouse-client >/dev/null
fi

mkdir -p "$CH_DIR"/{etc,data,tmp,log,user_files,format_schemas}
sed -e "s#@DIR@#$CH_DIR#g" -e "s#@HTTP_PORT@#$CH_HTTP_PORT#g" -e "s#@TCP_PORT@#$CH_TCP_PORT#g" \
    deploy/clickhouse/config.xml >"$CH_DIR/etc/config.xml"
cp deploy/clickhouse/users.xml "$CH_DIR/etc/users.xml"

echo "starting clickhouse-server on 127.0.0.1:$CH_HTTP_PORT (data in $CH_DIR)"
# Detached (setsid, nohup) with every stream redirected, so it outlives this
# script and holds no pipe of whoever ran it; its pid goes to $CH_DIR/clickhouse.pid.
# ClickHouse refuses to run as root only when the data folder belongs to
# another user; here root owns it, so it runs as is.
rm -f "$CH_DIR/clickhouse.pid"
cd "$CH_DIR"
setsid nohup clickhouse-server --config-file="$CH_DIR/etc/config.xml" \
    >"$CH_DIR/log/stdout.log" 2>&1 </dev/null &
# A simple command run in the background execs, so $! is the server itself.
echo $! >"$CH_DIR/clickhouse.pid"

for _ in $(seq 1 300); do
    if ping; then
        exit 0
    fi
    sleep 0.1
done
echo "clickhouse-server did not answer on 127.0.0.1:$CH_HTTP_PORT within 30 s; log:" >&2
tail -n 30 "$CH_DIR/log/clickhouse-server.err.log" "$CH_DIR/log/stdout.log" >&2 2>/dev/null || true
exit 1
