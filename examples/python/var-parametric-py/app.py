"""var-parametric-py: delta-normal (variance-covariance) value at risk in Python.

The same model as the Rust example `plugins/var-parametric`, written in pure
Python and built into a WebAssembly component with componentize-py (see
`../build.sh`). It follows the same conventions, so both answer the same
portfolio with the same number up to floating-point rounding:

- sample covariance with divisor N − 1, zero mean (no drift term);
- z = Φ⁻¹(confidence) by Wichura's AS 241, the algorithm of the Rust SDK's
  `math::normal_quantile` (and of CPython's `statistics.NormalDist.inv_cdf`);
- VaR = z × σ_p × √horizon_days, σ_p² the sample variance of the scenario P&L;
- breakdown: the Euler allocation, one contribution per position.

Only the standard library is used, and nothing that does I/O: the host hands
every price to `score_batch`.
"""

import math
from typing import List

import wit_world
from wit_world.imports.types import (
    Contribution,
    DataNeeds,
    Job,
    MarketData,
    ModelError,
    ModelError_InsufficientData,
    ModelError_Internal,
    ModelError_InvalidInput,
    ModelInfo,
    ParamSpec,
    Score,
    Unit,
)
from componentize_py_types import Err, Ok, Result

NAME = "var-parametric-py"
VERSION = "1.0.0"

DESCRIPTION = """\
Delta-normal (variance-covariance) value at risk, in Python: the confidence \
quantile of the loss when daily returns are jointly normal with zero mean and \
the covariance of the last N = lookback_days daily returns.
- Formula: `VaR = z × σ_p × √horizon_days`, with `z = Φ⁻¹(confidence)` \
(Wichura's AS 241), `σ_p = √(vᵀ Σ v)` and Σ the sample covariance matrix \
(divisor N − 1) of the instruments' returns, computed as the sample variance \
of the scenario P&L `PnL[t] = Σ_i v[i] r[i,t]`.
- Zero-mean assumption: no drift term.
- Breakdown (Euler allocation): position i contributes \
`z × √horizon_days × v[i] × (Σ v)[i] / σ_p`; 0 when σ_p is 0.
Same conventions as var-parametric (parameters, position values, scenarios, \
horizon, result, breakdown)."""

CONFIDENCE = "confidence"
HORIZON = "horizon_days"
LOOKBACK = "lookback_days"


class ModelFailure(Exception):
    """A job the model cannot score; carries the contract's model-error."""

    def __init__(self, error: ModelError):
        super().__init__(error.value)
        self.error = error


def invalid_input(message: str) -> ModelFailure:
    return ModelFailure(ModelError_InvalidInput(message))


def insufficient_data(message: str) -> ModelFailure:
    return ModelFailure(ModelError_InsufficientData(message))


def internal(message: str) -> ModelFailure:
    return ModelFailure(ModelError_Internal(message))


# AS 241 (Wichura 1988) coefficients, lowest degree first, as in the Rust SDK.
_A = (3.3871328727963666080e0, 1.3314166789178437745e2, 1.9715909503065514427e3,
      1.3731693765509461125e4, 4.5921953931549871457e4, 6.7265770927008700853e4,
      3.3430575583588128105e4, 2.5090809287301226727e3)
_B = (1.0, 4.2313330701600911252e1, 6.8718700749205790830e2, 5.3941960214247511077e3,
      2.1213794301586595867e4, 3.9307895800092710610e4, 2.8729085735721942674e4,
      5.2264952788528545610e3)
_C = (1.42343711074968357734e0, 4.63033784615654529590e0, 5.76949722146069140550e0,
      3.64784832476320460504e0, 1.27045825245236838258e0, 2.41780725177450611770e-1,
      2.27238449892691845833e-2, 7.74545014278341407640e-4)
_D = (1.0, 2.05319162663775882187e0, 1.67638483018380384940e0, 6.89767334985100004550e-1,
      1.48103976427480074590e-1, 1.51986665636164571966e-2, 5.47593808499534494600e-4,
      1.05075007164441684324e-9)
_E = (6.65790464350110377720e0, 5.46378491116411436990e0, 1.78482653991729133580e0,
      2.96560571828504891230e-1, 2.65321895265761230930e-2, 1.24266094738807843860e-3,
      2.71155556874348757815e-5, 2.01033439929228813265e-7)
_F = (1.0, 5.99832206555887937690e-1, 1.36929880922735805310e-1, 1.48753612908506148525e-2,
      7.86869131145613259100e-4, 1.84631831751005468180e-5, 1.42151175831644588870e-7,
      2.04426310338993978564e-15)


def _poly(c, x: float) -> float:
    """Horner evaluation of c[0] + c[1] x + … + c[7] x⁷ (same order as the SDK)."""
    acc = 0.0
    for ci in reversed(c):
        acc = acc * x + ci
    return acc


def normal_quantile(p: float) -> float:
    """Φ⁻¹(p), the standard normal quantile, by AS 241 (relative error ~1e-16).

    Written out rather than taken from `statistics.NormalDist` so the model
    depends on nothing but `math` and mirrors the Rust SDK step by step.
    """
    if math.isnan(p) or p < 0.0 or p > 1.0:
        return math.nan
    if p == 0.0:
        return -math.inf
    if p == 1.0:
        return math.inf
    q = p - 0.5
    if abs(q) <= 0.425:
        r = 0.180625 - q * q
        return q * _poly(_A, r) / _poly(_B, r)
    r = p if q < 0.0 else 1.0 - p
    r = math.sqrt(-math.log(r))
    if r <= 5.0:
        r -= 1.6
        x = _poly(_C, r) / _poly(_D, r)
    else:
        r -= 5.0
        x = _poly(_E, r) / _poly(_F, r)
    return -x if q < 0.0 else x


def _is_whole(x: float) -> bool:
    return math.isfinite(x) and x == math.floor(x)


def parse_params(values: List[float]):
    """(confidence, horizon_days, lookback_days), re-checked as the Rust model does."""
    if len(values) != 3:
        raise invalid_input(
            f"expected 3 parameter values ({CONFIDENCE}, {HORIZON}, {LOOKBACK}), got {len(values)}")
    confidence, horizon, lookback = values
    if not (0.0 < confidence < 1.0):
        raise invalid_input(
            f"{CONFIDENCE} must be strictly between 0 and 1 (e.g. 0.99), got {confidence}")
    if not (_is_whole(horizon) and horizon >= 1.0):
        raise invalid_input(
            f"{HORIZON} must be a whole number of days, at least 1, got {horizon}")
    if not (_is_whole(lookback) and lookback >= 2.0):
        raise invalid_input(
            f"{LOOKBACK} must be a whole number of days, at least 2, got {lookback}")
    return confidence, horizon, int(lookback)


class Batch:
    """The market data of one call, with returns computed once per series."""

    def __init__(self, market: MarketData):
        self.market = market
        self._returns = {}

    def series(self, index: int):
        if not 0 <= index < len(self.market.series):
            raise invalid_input(
                f"position refers to series {index}, but the batch has "
                f"{len(self.market.series)} series")
        return self.market.series[index]

    def last_close(self, index: int) -> float:
        series = self.series(index)
        if not series.closes:
            raise insufficient_data(f"no close for {series.instrument}")
        return series.closes[-1]

    def returns(self, index: int, lookback: int) -> List[float]:
        """The last `lookback` simple daily returns, oldest first."""
        series = self.series(index)
        cached = self._returns.get(index)
        if cached is None:
            closes = series.closes
            all_returns = [b / a - 1.0 for a, b in zip(closes, closes[1:])]
            usable_from = 0
            for i in range(len(all_returns) - 1, -1, -1):
                if not math.isfinite(all_returns[i]):
                    usable_from = i + 1
                    break
            cached = (all_returns, usable_from)
            self._returns[index] = cached
        all_returns, usable_from = cached
        as_of = self.market.as_of
        if len(all_returns) < lookback:
            raise insufficient_data(
                f"{series.instrument} has {len(all_returns)} daily returns up to {as_of}, "
                f"the model needs {lookback}")
        start = len(all_returns) - lookback
        if start < usable_from:
            raise insufficient_data(
                f"{series.instrument} has {len(all_returns) - usable_from} usable daily returns "
                f"up to {as_of} (prices must be finite and > 0), the model needs {lookback}")
        return all_returns[start:]


def score_job(batch: Batch, job: Job) -> Score:
    confidence, horizon, n = parse_params(job.params)
    positions = job.portfolio.positions
    if not positions:
        raise invalid_input("the portfolio has no positions")
    values = [p.quantity * batch.last_close(p.series) for p in positions]
    returns = [batch.returns(p.series, n) for p in positions]

    # Scenario P&L, PnL[t] = Σ_i v[i] r[i,t]: one C-level dot product per
    # scenario (math.sumprod, Python 3.12+; componentize-py 0.25 bundles
    # CPython 3.14) instead of a Python loop over positions and scenarios.
    pnl = [math.sumprod(values, scenario) for scenario in zip(*returns)]
    for t, p in enumerate(pnl):
        if not math.isfinite(p):
            raise internal(
                f"the P&L of scenario {t + 1} of {n} is {p}: positions or price moves are "
                f"too large to value in f64")

    mean = math.fsum(pnl) / n
    constant = all(p == pnl[0] for p in pnl)
    centred = [p - mean for p in pnl]
    denominator = n - 1
    sigma = 0.0 if constant else math.sqrt(math.sumprod(centred, centred) / denominator)
    if not math.isfinite(sigma):
        raise internal(
            f"the portfolio's P&L standard deviation is {sigma}: positions or price moves are "
            f"too large to value in f64")

    z = normal_quantile(confidence)
    scale = math.sqrt(horizon)
    centred_sum = math.fsum(centred)
    breakdown = []
    for position, v, r in zip(positions, values, returns):
        if sigma == 0.0:
            contribution = 0.0
        else:
            # (Σ v)[i] = Σ_t (r[i,t] − r̄[i]) d[t] / (N − 1)
            r_d = math.sumprod(r, centred)
            r_sum = math.fsum(r)
            sigma_v = (r_d - r_sum / n * centred_sum) / denominator
            contribution = z * scale * v * sigma_v / sigma
        breakdown.append(Contribution(batch.series(position.series).instrument, contribution))
    return Score(z * sigma * scale, Unit.CURRENCY_AMOUNT, breakdown)


class WitWorld(wit_world.WitWorld):
    """The component's exports: `info` and `score-batch` of riskhost:model."""

    def info(self) -> ModelInfo:
        return ModelInfo(
            name=NAME,
            version=VERSION,
            description=DESCRIPTION,
            params=[
                ParamSpec(CONFIDENCE, "Confidence level of the loss quantile, e.g. 0.99 for 99%.",
                          0.99, 0.5, 0.9999, False),
                ParamSpec(HORIZON, "Holding period in trading days; the 1-day figure is scaled "
                          "by its square root.", 1.0, 1.0, 250.0, True),
                ParamSpec(LOOKBACK, "Number of most recent daily returns used as scenarios.",
                          250.0, 2.0, 5000.0, True),
            ],
            data=DataNeeds(lookback_days=250, lookback_param=LOOKBACK),
        )

    def score_batch(self, market: MarketData, jobs: List[Job]) -> List[Result[Score, ModelError]]:
        batch = Batch(market)
        results: List[Result[Score, ModelError]] = []
        for job in jobs:
            try:
                results.append(Ok(score_job(batch, job)))
            except ModelFailure as failure:
                results.append(Err(failure.error))
        return results
