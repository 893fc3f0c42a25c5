#!/usr/bin/env python3
"""Replays a Zipf-distributed workload over N portfolios against one or more
riskhost replicas (round-robin, like a load balancer) and reports the memo's
hit rate by tier. The sequence is seeded, so a run is reproducible.

    zipf.py --servers http://127.0.0.1:8080,http://127.0.0.1:8081 \
            --portfolios 1000 --requests 20000 --exponent 1.0
"""
import argparse
import bisect
import http.client
import json
import random
import threading
import urllib.parse
from collections import Counter


def body(model, rank):
    return json.dumps({
        "model": model,
        "portfolio": {"id": f"p{rank}", "positions": [
            {"instrument": "SPX", "quantity": 1000 + rank},
            {"instrument": "TLT", "quantity": -200},
            {"instrument": "AAPL", "quantity": 50},
            {"instrument": "GOLD", "quantity": 30},
            {"instrument": "EURUSD", "quantity": 10000}]},
    })


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--servers", required=True)
    ap.add_argument("--portfolios", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--exponent", type=float, default=1.0)
    ap.add_argument("--model", default="var-historical")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    servers = [urllib.parse.urlparse(s) for s in args.servers.split(",")]
    weights = [1.0 / (k ** args.exponent) for k in range(1, args.portfolios + 1)]
    cdf, total = [], 0.0
    for w in weights:
        total += w
        cdf.append(total)
    rng = random.Random(args.seed)
    ranks = [bisect.bisect_left(cdf, rng.random() * total) for _ in range(args.requests)]

    counts = Counter()
    lock = threading.Lock()

    def worker(t):
        conns = [http.client.HTTPConnection(s.hostname, s.port, timeout=30) for s in servers]
        seen = Counter()
        for i in range(t, args.requests, args.threads):
            conn = conns[i % len(conns)]
            conn.request("POST", "/v1/score", body(args.model, ranks[i]),
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            answer = json.loads(resp.read())
            if resp.status != 200:
                seen["error"] += 1
            else:
                seen[answer.get("cache_tier") or "computed"] += 1
        with lock:
            counts.update(seen)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    n = args.requests
    distinct = len(set(ranks))
    hits = counts["l1"] + counts["l2"]
    print(f"{n} requests over {args.portfolios} portfolios (Zipf s={args.exponent}, "
          f"{distinct} distinct), {len(servers)} replica(s): "
          f"hit rate {hits / n:.1%} (l1 {counts['l1']}, l2 {counts['l2']}, "
          f"computed {counts['computed']}, errors {counts['error']}); "
          f"best possible {1 - distinct / n:.1%}")


if __name__ == "__main__":
    main()
