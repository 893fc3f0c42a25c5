"""The platform riskhost replaces, rebuilt as the benchmark's reference.

A FastAPI + NumPy historical VaR service with Redis result caching, built the
way that platform was: `POST /v1/score` takes riskhost's score request
(`{"model": "var-historical", "portfolio": {"positions": [...]}, "params":
{...}}`) and answers the historical-simulation VaR exactly as
`plugins/var-historical/README.md` defines it, on the price table the bench
writes from riskhost's embedded sample data. A `@cache_result` decorator keys
each answer by a hash of the request body: Redis GET, on a hit the stored
JSON, on a miss the computation and a SETEX.

Run by `cargo xtask bench --only platform` (scenario `platform` of
`examples/bench`) as `uvicorn app:app --workers 2`, configured by:

- `RISKHOST_BENCH_PRICES`: the long CSV `date,instrument,close` (observations
  only; the calendar is the union of their dates, gaps forward-filled, as
  riskhost's `PriceTable` does);
- `RISKHOST_BENCH_REDIS_URL`: the Redis the cache uses;
- `RISKHOST_BENCH_REDIS_PREFIX`: the prefix of its keys (default
  `bench-fastapi:`);
- `RISKHOST_BENCH_READY_DIR` (optional): each worker, once it reaches Redis,
  creates a file named after its pid there, so the bench can wait for every
  worker before it measures.
"""

import csv
import functools
import hashlib
import json
import math
import os
from contextlib import asynccontextmanager

import numpy as np
import redis.asyncio as aioredis
from fastapi import FastAPI, HTTPException, Request, Response
from pydantic import BaseModel, ValidationError

MODEL = "var-historical"
# name: (default, min, max, whole number)
PARAMS = {
    "confidence": (0.99, 0.5, 0.9999, False),
    "horizon_days": (1.0, 1.0, 250.0, True),
    "lookback_days": (250.0, 2.0, 5000.0, True),
}
CACHE_TTL_SECONDS = 3600


class Prices:
    """Daily closes: one row per instrument over the union calendar of dates,
    forward-filled, NaN before an instrument's first close."""

    def __init__(self, path):
        rows = []
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                rows.append((row["date"], row["instrument"], float(row["close"])))
        if not rows:
            raise RuntimeError(f"{path} holds no prices")
        # ISO dates sort as strings.
        self.dates = sorted({r[0] for r in rows})
        self.instruments = sorted({r[1] for r in rows})
        self.index = {id_: i for i, id_ in enumerate(self.instruments)}
        date_index = {d: j for j, d in enumerate(self.dates)}
        closes = np.full((len(self.instruments), len(self.dates)), np.nan)
        observed = np.zeros(closes.shape, dtype=bool)
        for date, instrument, close in rows:
            i, j = self.index[instrument], date_index[date]
            closes[i, j] = close
            observed[i, j] = True
        # Forward fill: each cell takes the close of its last observation.
        last = np.where(observed, np.arange(len(self.dates)), -1)
        np.maximum.accumulate(last, axis=1, out=last)
        filled = np.take_along_axis(closes, np.maximum(last, 0), axis=1)
        self.closes = np.where(last >= 0, filled, np.nan)


class Position(BaseModel):
    instrument: str
    quantity: float


class Portfolio(BaseModel):
    positions: list[Position]


class ScoreRequest(BaseModel):
    model: str
    portfolio: Portfolio
    params: dict[str, float] = {}


def resolve_params(given):
    unknown = sorted(set(given) - set(PARAMS))
    if unknown:
        raise HTTPException(422, f"unknown parameters {unknown} of {MODEL}")
    resolved = {}
    for name, (default, low, high, whole) in PARAMS.items():
        value = float(given.get(name, default))
        if not (math.isfinite(value) and low <= value <= high):
            raise HTTPException(422, f"{name} must be within [{low}, {high}], got {value}")
        if whole and value != int(value):
            raise HTTPException(422, f"{name} must be a whole number, got {value}")
        resolved[name] = value
    return resolved


def historical_var(prices, positions, params):
    """VaR = L(k) × √horizon_days, L(k) the type-1 empirical quantile of the
    N = lookback_days scenario losses L[t] = −Σ_i v[i] r[i,t]."""
    if not positions:
        raise HTTPException(422, "the portfolio has no positions")
    unknown = sorted({p.instrument for p in positions} - set(prices.index))
    if unknown:
        raise HTTPException(422, f"unknown instruments {unknown}")
    n = int(params["lookback_days"])
    end = len(prices.dates) - 1  # as of the latest date
    start = max(end - n, 0)
    rows = [prices.index[p.instrument] for p in positions]
    window = prices.closes[rows, start : end + 1]
    returns = window[:, 1:] / window[:, :-1] - 1.0
    if returns.shape[1] < n or not np.isfinite(returns).all():
        raise HTTPException(422, f"insufficient data: {n} daily returns needed")
    quantities = np.array([p.quantity for p in positions])
    values = quantities * window[:, -1]
    losses = -(values @ returns)
    k = min(max(math.ceil(params["confidence"] * n - 1e-9), 1), n)
    # Equal losses ordered by date, oldest first: a stable sort.
    t = int(np.argsort(losses, kind="stable")[k - 1])
    scale = math.sqrt(params["horizon_days"])
    contributions = -(values * returns[:, t]) * scale
    return {
        "model": MODEL,
        "as_of": prices.dates[end],
        "value": float(losses[t] * scale),
        "unit": "currency_amount",
        "breakdown": [
            {"name": p.instrument, "value": float(c)}
            for p, c in zip(positions, contributions)
        ],
        "params": params,
        "cached": False,
    }


def cache_result(ttl):
    """Caches the decorated endpoint's JSON answer in Redis for `ttl` seconds,
    keyed by a hash of the request body."""

    def decorate(endpoint):
        @functools.wraps(endpoint)
        async def cached(request: Request):
            body = await request.body()
            key = PREFIX + hashlib.sha256(body).hexdigest()
            hit = await request.app.state.redis.get(key)
            if hit is not None:
                return Response(hit, media_type="application/json")
            answer = await endpoint(request)
            payload = json.dumps(answer).encode()
            await request.app.state.redis.setex(key, ttl, payload)
            return Response(payload, media_type="application/json")

        return cached

    return decorate


PRICES = Prices(os.environ["RISKHOST_BENCH_PRICES"])
PREFIX = os.environ.get("RISKHOST_BENCH_REDIS_PREFIX", "bench-fastapi:")


@asynccontextmanager
async def lifespan(app):
    app.state.redis = aioredis.Redis.from_url(os.environ["RISKHOST_BENCH_REDIS_URL"])
    await app.state.redis.ping()
    ready_dir = os.environ.get("RISKHOST_BENCH_READY_DIR")
    if ready_dir:
        with open(os.path.join(ready_dir, str(os.getpid())), "w"):
            pass
    yield
    await app.state.redis.aclose()


app = FastAPI(lifespan=lifespan)


@app.get("/healthz")
async def healthz():
    return {"status": "ok"}


@app.post("/v1/score")
@cache_result(ttl=CACHE_TTL_SECONDS)
async def score(request: Request):
    try:
        req = ScoreRequest.model_validate_json(await request.body())
    except ValidationError as e:
        raise HTTPException(422, f"invalid score request: {e}") from None
    if req.model != MODEL:
        raise HTTPException(404, f"unknown model {req.model!r} (this service runs {MODEL})")
    params = resolve_params(req.params)
    return historical_var(PRICES, req.portfolio.positions, params)
