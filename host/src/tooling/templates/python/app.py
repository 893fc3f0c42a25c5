"""{{name}}: historical value at risk, a riskhost model in Python.

Scaffolded by `riskhost new`: a small but complete model to change into your
own. It shows the parts every model has: `info()` (name, version,
parameters, the price history it needs) and `score_batch()` (a batch of
jobs, each a portfolio and its parameter values), errors a client can act
on, and a breakdown that explains the number.

VaR = the loss at the `confidence` quantile of the portfolio's losses over
the last `lookback_days` daily returns (type-1 empirical quantile: the k-th
smallest loss, k = ceil(confidence × N)). The breakdown is each position's
loss in that scenario, so it sums to the VaR.

`./build.sh` turns this file into dist/{{name}}.wasm with componentize-py.
Use the standard library only (pure-Python packages can be vendored next to
this file); the model gets every price it needs in its arguments and can do
no I/O.
"""

import math
from typing import List

import wit_world
from componentize_py_types import Err, Ok, Result
from wit_world.imports.types import (
    Contribution,
    DataNeeds,
    Job,
    MarketData,
    ModelError,
    ModelError_InsufficientData,
    ModelError_InvalidInput,
    ModelInfo,
    ParamSpec,
    Score,
    Unit,
)


class Reject(Exception):
    """A job this model cannot score; `error` is what the client is told."""

    def __init__(self, error: ModelError):
        super().__init__(error.value)
        self.error = error


def returns(market: MarketData, index: int, n: int) -> List[float]:
    """The last n simple daily returns of series `index`, oldest first."""
    series = market.series[index]
    closes = series.closes[-(n + 1):]
    # The host marks dates before an instrument's first price with NaN.
    if len(closes) < n + 1 or not all(math.isfinite(c) and c > 0.0 for c in closes):
        raise Reject(ModelError_InsufficientData(
            f"{series.instrument} has fewer than {n} usable daily returns up to "
            f"{market.as_of}; lower lookback_days or score a later date"))
    return [b / a - 1.0 for a, b in zip(closes, closes[1:])]


def score(market: MarketData, job: Job) -> Score:
    if len(job.params) != 2:
        raise Reject(ModelError_InvalidInput(
            f"expected 2 parameter values (confidence, lookback_days), got {len(job.params)}"))
    confidence, lookback_days = job.params
    n = int(lookback_days)
    positions = job.portfolio.positions
    if not positions:
        raise Reject(ModelError_InvalidInput("the portfolio has no positions"))
    # Position values at the as-of date (the last close).
    values = [p.quantity * market.series[p.series].closes[-1] for p in positions]
    rets = [returns(market, p.series, n) for p in positions]

    # Loss of each scenario t: −Σ_i v[i] × r[i][t].
    losses = []
    for t in range(n):
        pnl = 0.0
        for v, r in zip(values, rets):
            pnl += v * r[t]
        losses.append(-pnl)

    # The scenario at the quantile: the k-th smallest loss (a stable sort,
    # so ties resolve to the earlier date).
    k = min(max(math.ceil(confidence * n - 1e-9), 1), n)
    t = sorted(range(n), key=lambda i: losses[i])[k - 1]

    breakdown = [
        Contribution(market.series[p.series].instrument, -v * r[t])
        for p, v, r in zip(positions, values, rets)
    ]
    return Score(losses[t], Unit.CURRENCY_AMOUNT, breakdown)


class WitWorld(wit_world.WitWorld):
    """The component's exports: `info` and `score-batch` of riskhost:model."""

    def info(self) -> ModelInfo:
        return ModelInfo(
            # The name clients score with; lower-kebab-case.
            name="{{name}}",
            version="0.1.0",
            description="Historical VaR: the k-th smallest of the last N daily portfolio "
                        "losses, k = ceil(confidence × N), N = lookback_days. Breakdown: each "
                        "position's loss in that scenario.",
            # The host checks bounds and whole numbers before the model is
            # called, and passes values in this order.
            params=[
                ParamSpec("confidence", "Confidence level, e.g. 0.99.", 0.99, 0.5, 0.9999, False),
                ParamSpec("lookback_days", "Daily returns used as scenarios.",
                          250.0, 2.0, 5000.0, True),
            ],
            # The host sends lookback_days + 1 closes per instrument.
            data=DataNeeds(lookback_days=250, lookback_param="lookback_days"),
        )

    def score_batch(self, market: MarketData, jobs: List[Job]) -> List[Result[Score, ModelError]]:
        # One result per job, in order; one job's error must not fail the others.
        results: List[Result[Score, ModelError]] = []
        for job in jobs:
            try:
                results.append(Ok(score(market, job)))
            except Reject as reject:
                results.append(Err(reject.error))
        return results
