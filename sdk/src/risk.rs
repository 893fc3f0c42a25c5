//! Standard parameters and scenario helpers for VaR/ES-style models.
//!
//! The example models (`var-historical`, `var-parametric`, `es-historical`)
//! share one set of conventions: the parameters `confidence`, `horizon_days`
//! and `lookback_days`, how a job's parameter vector is checked, and, for
//! historical simulation, how scenario losses are computed and ordered. A
//! model that follows the same conventions takes them from here, so its
//! parameters and numbers agree with the examples'.

use crate::{DataNeeds, ModelError, ParamSpec};

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

pub const PARAM_CONFIDENCE: &str = "confidence";
pub const PARAM_HORIZON: &str = "horizon_days";
pub const PARAM_LOOKBACK: &str = "lookback_days";

/// The three parameters, in the order `RiskParams::parse` reads them.
pub fn params() -> Vec<ParamSpec> {
    vec![
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
    ]
}

/// The price history these parameters need: `lookback_days` returns.
pub fn data_needs() -> DataNeeds {
    DataNeeds {
        lookback_days: 250,
        lookback_param: Some(PARAM_LOOKBACK.to_owned()),
    }
}

/// The validated parameters of one job.
pub struct RiskParams {
    pub confidence: f64,
    pub horizon_days: f64,
    pub lookback_days: usize,
}

impl RiskParams {
    /// Reads `job.params` (in the order of `info().params`) and re-checks what
    /// the model relies on, although the host has checked bounds already.
    pub fn parse(values: &[f64]) -> Result<RiskParams, ModelError> {
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
        Ok(RiskParams {
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
pub fn scenario_losses(
    values: &[f64],
    returns: &[&[f64]],
    n: usize,
) -> Result<Vec<(f64, u32)>, ModelError> {
    let mut losses = vec![0.0_f64; n];
    for (&v, r) in values.iter().zip(returns) {
        crate::math::sub_scaled(&mut losses, v, r);
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
pub fn by_loss_then_date(a: &(f64, u32), b: &(f64, u32)) -> std::cmp::Ordering {
    a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))
}
