#!/usr/bin/env python3
"""Load test of the score-event sink (not a CI test, and not one of the
`cargo xtask bench` scenarios): `wrk` on single requests with and without
events into ClickHouse (p99 of the request path), and the rows written per
second. The data sources' batch timings (embedded against PostgreSQL) are
scenario 4 of `cargo xtask bench`; see BENCHMARKS.md.

Needs a release build, ClickHouse on 8123 (tests/clickhouse.sh) and `wrk`:

    cargo build --release -p riskhost && plugins/build.sh
    examples/events-load.py [--binary target/release/riskhost]
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

CH = "http://127.0.0.1:8123"
MODELS = ["var-historical", "var-parametric", "es-historical"]


def post(url, body, timeout=600):
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


def start(binary, args):
    p = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0",
                          "--anonymous-scoring", "--rate-limit-per-minute", "0", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         env={**os.environ, "RUST_LOG": "warn"})
    line = p.stdout.readline()
    base = re.search(r"(http://\S+)", line).group(1)
    for _ in range(600):
        try:
            urllib.request.urlopen(base + "/readyz", timeout=2)
            return p, base
        except Exception:
            time.sleep(0.1)
    raise SystemExit("server not ready")


WRK_LUA = """
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.body = '{"model": "var-historical", "portfolio": {"id": "balanced"}}'
"""


def wrk(base, seconds, connections):
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_LUA)
        lua = f.name
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", lua,
                          base + "/v1/score"], check=True, capture_output=True, text=True).stdout
    os.unlink(lua)
    p99 = re.search(r"99%\s+(\S+)", out).group(1)
    p50 = re.search(r"50%\s+(\S+)", out).group(1)
    rps = float(re.search(r"Requests/sec:\s+(\S+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    return p50, p99, rps, total


def ch(sql):
    return urllib.request.urlopen(urllib.request.Request(CH + "/", data=sql.encode()), timeout=30).read().decode().strip()


def events_bench(binary, seconds):
    db = f"bench_{os.getpid()}"
    data_dir = tempfile.mkdtemp(prefix="riskhost-bench-")
    print(f"single cached requests, wrk -t2 -c32 -d{seconds}s")
    for label, args in [("no sink", ["--events", "none"]),
                        ("clickhouse sink", ["--clickhouse-url", CH, "--clickhouse-database", db,
                                             "--data-dir", data_dir])]:
        p, base = start(binary, args)
        try:
            post(base + "/v1/score", {"model": "var-historical", "portfolio": {"id": "balanced"}})
            if label != "no sink":
                time.sleep(2)
                before = int(ch(f"SELECT count() FROM {db}.score_events"))
            p50, p99, rps, total = wrk(base, seconds, 32)
            line = f"  {label:16s} p50 {p50:>8s}  p99 {p99:>8s}  {rps:9.0f} req/s"
            if label != "no sink":
                t = time.perf_counter()
                while int(ch(f"SELECT count() FROM {db}.score_events")) < before + total:
                    time.sleep(0.2)
                    if time.perf_counter() - t > 120:
                        break
                rows = int(ch(f"SELECT count() FROM {db}.score_events")) - before
                line += f"  {rows} rows for {total} requests ({rows/seconds:.0f} events/s sustained)"
            print(line)
        finally:
            p.terminate()
    # Batch cells: the most events per second the sink takes.
    p, base = start(binary, ["--clickhouse-url", CH, "--clickhouse-database", db, "--data-dir", data_dir])
    try:
        body = {"models": MODELS, "portfolios": [{"id": x} for x in ["balanced", "tech", "macro", "single-spx", "fifty"]] * 200}
        post(base + "/v1/score/batch", body)
        time.sleep(2)
        before = int(ch(f"SELECT count() FROM {db}.score_events"))
        t = time.perf_counter()
        n = 0
        while time.perf_counter() - t < seconds:
            post(base + "/v1/score/batch", body)
            n += 3000
        served_in = time.perf_counter() - t
        while int(ch(f"SELECT count() FROM {db}.score_events")) < before + n:
            time.sleep(0.1)
        written_in = time.perf_counter() - t
        print(f"  batch API (1,000 portfolios x 3 models, cached): {n} events served in {served_in:.1f} s, "
              f"all in ClickHouse after {written_in:.1f} s -> {n/written_in:.0f} events/s")
    finally:
        p.terminate()
        ch(f"DROP DATABASE IF EXISTS {db}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/riskhost")
    ap.add_argument("--seconds", type=int, default=20)
    a = ap.parse_args()
    events_bench(a.binary, a.seconds)


if __name__ == "__main__":
    sys.exit(main())
