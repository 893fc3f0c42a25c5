//! `var-historical`: historical-simulation value at risk.
//!
//! Revalues today's positions under each of the last `lookback_days` daily
//! returns of their instruments and reports the type-1 empirical quantile of
//! the resulting losses at `confidence`, scaled to `horizon_days` by the
//! square-root-of-time rule. The breakdown is each position's loss in the
//! scenario that sets the VaR. See `README.md` for the exact definitions and a
//! worked example.

use riskhost_sdk::{
    BatchContext, Contribution, DataNeeds, Job, Model, ModelError, ModelInfo, ParamSpec, Score,
    Unit, math,
};

/// What this model computes, for `info().description`.
const ABOUT: &str = "\
Historical-simulation value at risk (VaR): the loss that today's positions \
would suffer in the k-th smallest of the N = lookback_days historical loss \
scenarios; no more than (1 − confidence)·N scenarios lose more.
- Formula: `VaR = L(k) × √horizon_days`, where `L(1) ≤ … ≤ L(N)` are the \
scenario losses sorted ascending and `k = ⌈confidence × N⌉`, computed as \
`⌈confidence × N − 1e-9⌉` and clamped to [1, N]: the type-1 empirical \
quantile (inverse of the empirical CDF, Hyndman & Fan definition 1), with no \
interpolation. Example: N = 250, confidence = 0.99 gives k = 248, the third \
largest loss.
- Ties: equal losses are ordered by scenario date, oldest first, so the \
scenario t* of rank k is unique.
- Breakdown: position i contributes `−v[i] × r[i,t*] × √horizon_days`, its \
loss in scenario t*.";

/// The conventions shared by var-historical, var-parametric and es-historical,
/// word for word; also the `Conventions` section of each model's README.
pub const CONVENTIONS: &str = "\
Conventions shared by var-historical, var-parametric and es-historical:
- Parameters, in this order: `confidence` (real, default 0.99, from 0.5 to \
0.9999), `horizon_days` (integer, default 1, from 1 to 250), `lookback_days` \
(integer, default 250, from 2 to 5000). The model itself rejects, as \
invalid-input, a confidence outside (0, 1), a fractional or non-finite \
horizon_days or lookback_days, a horizon_days below 1 and a lookback_days \
below 2.
- Position value: `v[i] = quantity[i] × close[i]` on the as-of date (the last \
close), in the prices' currency.
- Scenarios: the last N = lookback_days simple daily returns \
`r[i,t] = c[i,t] / c[i,t−1] − 1` of every instrument, aligned by date. An \
instrument with fewer than N returns is insufficient-data, naming the \
instrument.
- Scenario P&L: `PnL[t] = Σ_i v[i] × r[i,t]`; scenario loss `L[t] = −PnL[t]`.
- Horizon: the 1-day figure is multiplied by `√horizon_days` \
(square-root-of-time rule).
- Result: a loss amount in the prices' currency (unit currency-amount), \
positive for a loss. It is reported as computed, never clamped at 0: a \
historical VaR or ES is negative when the scenarios at and beyond its \
quantile are all gains.
- Breakdown: one contribution per position, named by its instrument, in the \
order of the portfolio's positions, summing to the value up to \
floating-point rounding.";

const PARAM_CONFIDENCE: &str = "confidence";
const PARAM_HORIZON: &str = "horizon_days";
const PARAM_LOOKBACK: &str = "lookback_days";

/// Historical-simulation VaR. See the crate documentation.
pub struct VarHistorical;

impl Model for VarHistorical {
    fn info() -> ModelInfo {
        ModelInfo {
            name: env!("CARGO_PKG_NAME").to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: format!("{ABOUT}\n\n{CONVENTIONS}"),
            params: vec![
                ParamSpec::real(
                    PARAM_CONFIDENCE,
                    "Confidence level of the loss quantile, e.g. 0.99 for 99%.",
                    0.99,
                    0.5,
                    0.9999,
                ),
                ParamSpec::integer(
                    PARAM_HORIZON,
                    "Holding period in trading days; the 1-day figure is scaled by its square root.",
                    1,
                    1,
                    250,
                ),
                ParamSpec::integer(
                    PARAM_LOOKBACK,
                    "Number of most recent daily returns used as scenarios.",
                    250,
                    2,
                    5000,
                ),
            ],
            data: DataNeeds {
                lookback_days: 250,
                lookback_param: Some(PARAM_LOOKBACK.to_owned()),
            },
        }
    }

    fn score(ctx: &BatchContext, job: &Job) -> Result<Score, ModelError> {
        let params = Params::parse(&job.params)?;
        let positions = &job.portfolio.positions;
        let values = ctx.position_values(&job.portfolio)?;
        let returns = positions
            .iter()
            .map(|p| ctx.returns(p.series, params.lookback_days))
            .collect::<Result<Vec<_>, _>>()?;

        let mut scenarios = scenario_losses(&values, &returns, params.lookback_days)?;
        let k = math::quantile_rank(scenarios.len(), params.confidence);
        scenarios.select_nth_unstable_by(k - 1, by_loss_then_date);
        let (loss, t) = scenarios[k - 1];
        let t = t as usize;

        let scale = params.horizon_days.sqrt();
        let breakdown = positions
            .iter()
            .zip(&values)
            .zip(&returns)
            .map(|((position, v), r)| {
                Ok(Contribution {
                    name: ctx.instrument(position.series)?.to_owned(),
                    value: -(v * r[t]) * scale,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;

        Ok(Score {
            value: loss * scale,
            unit: Unit::CurrencyAmount,
            breakdown,
        })
    }
}

/// The validated parameters of one job.
struct Params {
    confidence: f64,
    horizon_days: f64,
    lookback_days: usize,
}

impl Params {
    /// Reads `job.params` (in the order of `info().params`) and re-checks what
    /// the model relies on, although the host has checked bounds already.
    fn parse(values: &[f64]) -> Result<Params, ModelError> {
        let &[confidence, horizon_days, lookback_days] = values else {
            return Err(ModelError::InvalidInput(format!(
                "expected 3 parameter values ({PARAM_CONFIDENCE}, {PARAM_HORIZON}, \
                 {PARAM_LOOKBACK}), got {}",
                values.len()
            )));
        };
        if !(confidence > 0.0 && confidence < 1.0) {
            return Err(ModelError::InvalidInput(format!(
                "{PARAM_CONFIDENCE} must be strictly between 0 and 1 (e.g. 0.99), \
                 got {confidence}"
            )));
        }
        if !(is_whole(horizon_days) && horizon_days >= 1.0) {
            return Err(ModelError::InvalidInput(format!(
                "{PARAM_HORIZON} must be a whole number of days, at least 1, got {horizon_days}"
            )));
        }
        if !(is_whole(lookback_days) && lookback_days >= 2.0) {
            return Err(ModelError::InvalidInput(format!(
                "{PARAM_LOOKBACK} must be a whole number of days, at least 2, got {lookback_days}"
            )));
        }
        Ok(Params {
            confidence,
            horizon_days,
            // Saturates for absurd values, which then fail as insufficient data.
            lookback_days: lookback_days as usize,
        })
    }
}

fn is_whole(x: f64) -> bool {
    x.is_finite() && x.fract() == 0.0
}

/// The loss of every scenario, `L[t] = −Σ_i v[i] r[i,t]`, paired with `t`.
///
/// Losses are accumulated position by position over contiguous slices, and
/// start from +0.0 so that a zero loss is never −0.0 (which `total_cmp` would
/// order below +0.0). Fails with `internal` when a loss overflows.
fn scenario_losses(
    values: &[f64],
    returns: &[&[f64]],
    n: usize,
) -> Result<Vec<(f64, u32)>, ModelError> {
    let mut losses = vec![0.0_f64; n];
    for (&v, r) in values.iter().zip(returns) {
        for (loss, &x) in losses.iter_mut().zip(r.iter()) {
            *loss -= v * x;
        }
    }
    if let Some((t, loss)) = losses.iter().enumerate().find(|(_, l)| !l.is_finite()) {
        return Err(ModelError::Internal(format!(
            "the loss of scenario {} of {n} is {loss}: positions or price moves are too \
             large to value in f64",
            t + 1
        )));
    }
    Ok(losses.into_iter().zip(0u32..).collect())
}

/// Orders scenarios by loss, then by date (oldest first). Losses are finite
/// and never −0.0, so `total_cmp` is the numeric order.
fn by_loss_then_date(a: &(f64, u32), b: &(f64, u32)) -> std::cmp::Ordering {
    a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))
}

riskhost_sdk::export_model!(VarHistorical);
