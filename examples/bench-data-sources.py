#!/usr/bin/env python3
"""Measures the database data sources and the score-event sink.

1. A 10,000-portfolio batch (3 models, 20 positions each from the bundled
   instruments) with positions and prices in PostgreSQL (portfolios given by
   id) against the embedded source (positions inline), every cell a memo miss.
2. Score events into ClickHouse: `wrk` on single requests with and without
   the sink (p99 of the request path), and the rows written per second.

Needs a release build, PostgreSQL on 5432, ClickHouse on 8123
(tests/services.sh, tests/clickhouse.sh) and `wrk`:

    cargo build --release -p riskhost && plugins/build.sh
    examples/bench-data-sources.py [--binary target/release/riskhost]
"""

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

PG = "postgres://postgres@127.0.0.1:5432/test"
CH = "http://127.0.0.1:8123"
MODELS = ["var-historical", "var-parametric", "es-historical"]
INSTRUMENTS = ["SPX", "NDX", "SX5E", "NKY", "UKX", "HSI", "AAPL", "MSFT", "AMZN", "JPM",
               "XOM", "NVDA", "TSLA", "TLT", "IEF", "LQD", "HYG", "EURUSD", "USDJPY", "GBPUSD",
               "GOLD", "WTI", "COPPER", "BTCUSD"]


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


def portfolios(n, size, seed=7):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        held = rng.sample(INSTRUMENTS, size)
        out.append({"id": f"bench-{i:05d}",
                    "positions": [{"instrument": x, "quantity": rng.choice([-1, 1]) * rng.randint(1, 500)}
                                  for x in held]})
    return out


def psql(sql):
    subprocess.run(["psql", PG, "-q", "-v", "ON_ERROR_STOP=1", "-c", sql], check=True,
                   stdout=subprocess.DEVNULL)


def batch_bench(binary, runs):
    schema = f"bench_{os.getpid()}"
    ports = portfolios(10_000, 20)
    subprocess.run([binary, "db", "seed", "--postgres-url", PG, "--postgres-schema", schema],
                   check=True, stdout=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
    with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
        for p in ports:
            for x in p["positions"]:
                f.write(f"{p['id']},{x['instrument']},{x['quantity']}\n")
        csv_path = f.name
    psql(f"INSERT INTO {schema}.portfolios (id) SELECT 'bench-' || lpad(g::text, 5, '0') FROM generate_series(0, 9999) g")
    subprocess.run(["psql", PG, "-q", "-c", f"\\copy {schema}.positions FROM '{csv_path}' CSV"], check=True)
    os.unlink(csv_path)

    common = ["--events", "none", "--cache-max-mib", "1024"]
    emb, emb_base = start(binary, common)
    pg, pg_base = start(binary, [*common, "--data-source", "postgres", "--postgres-url", PG,
                                 "--postgres-schema", schema])
    inline = {"models": MODELS, "portfolios": ports}
    by_id = {"models": MODELS, "portfolios": [{"id": p["id"]} for p in ports]}
    results = {"embedded, inline": [], "postgres, by id": [], "postgres, inline": []}
    try:
        for run in range(runs):
            # A fresh confidence per run: every cell misses the memo.
            params = {"confidence": 0.99 - 0.001 * run}
            for name, base, body in [("embedded, inline", emb_base, inline),
                                     ("postgres, by id", pg_base, by_id)]:
                t = time.perf_counter()
                r = post(base + "/v1/score/batch", {**body, "params": params})
                results[name].append(time.perf_counter() - t)
                assert len(r["results"]) == 30_000 and not any("error" in c for c in r["results"]), name
            params = {"confidence": 0.95 - 0.001 * run}
            t = time.perf_counter()
            post(pg_base + "/v1/score/batch", {**inline, "params": params})
            results["postgres, inline"].append(time.perf_counter() - t)
    finally:
        emb.terminate(); pg.terminate()
        psql(f"DROP SCHEMA {schema} CASCADE")
    base = min(results["embedded, inline"])
    print("10,000 portfolios x 3 models (30,000 cells, all misses), best of", runs)
    for name, times in results.items():
        print(f"  {name:18s} best {min(times):6.3f} s  median {sorted(times)[len(times)//2]:6.3f} s  "
              f"ratio {min(times)/base:5.2f}")


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
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--only", choices=["batch", "events"])
    a = ap.parse_args()
    if a.only in (None, "batch"):
        batch_bench(a.binary, a.runs)
    if a.only in (None, "events"):
        events_bench(a.binary, a.seconds)


if __name__ == "__main__":
    sys.exit(main())
