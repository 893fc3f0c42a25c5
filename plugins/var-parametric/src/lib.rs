//! `var-parametric`: delta-normal (variance-covariance) value at risk.
//!
//! Treats the portfolio's daily P&L as normal with zero mean and the variance
//! implied by the sample covariance of its instruments' last `lookback_days`
//! daily returns, and reports the `confidence` quantile of the loss, scaled to
//! `horizon_days` by the square-root-of-time rule. The breakdown is the Euler
//! allocation. See `README.md` for the exact definitions and a worked example.

use riskhost_sdk::{
    BatchContext, Contribution, DataNeeds, Job, Model, ModelError, ModelInfo, ParamSpec, Score,
    Unit, math,
};

/// What this model computes, for `info().description`.
const ABOUT: &str = "\
Delta-normal (variance-covariance) value at risk: the confidence quantile of \
the loss when daily returns are jointly normal with zero mean and the \
covariance of the last N = lookback_days daily returns.
- Formula: `VaR = z × σ_p × √horizon_days`, with `z = Φ⁻¹(confidence)` (the \
standard normal quantile, Wichura's AS 241), `σ_p = √(vᵀ Σ v)` and Σ the \
sample covariance matrix (divisor N − 1) of the instruments' returns over the \
N scenarios. σ_p² is computed as the sample variance of the scenario P&L \
`PnL[t]`, which equals `vᵀ Σ v`.
- Zero-mean assumption: the sample means only centre the returns to \
estimate Σ; the VaR takes the expected daily return to be zero (no drift \
term).
- Breakdown (Euler allocation): position i contributes \
`z × √horizon_days × v[i] × (Σ v)[i] / σ_p`. When σ_p is 0 (e.g. every \
return is zero, or the positions hedge each other exactly) the VaR and every \
contribution are 0.";

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

/// Delta-normal VaR. See the crate documentation.
pub struct VarParametric;

impl Model for VarParametric {
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

        let n = params.lookback_days;
        let mut pnl = scenario_pnl(&values, &returns, n)?;
        let pnl_mean = math::mean(&pnl);
        // A constant P&L (e.g. all returns zero, or an exact hedge) has σ_p = 0
        // exactly, where the centred sums below could leave a rounding residue.
        let constant = pnl.iter().all(|&p| p == pnl[0]);
        // Centre in place: d[t] = PnL[t] − mean = Σ_i v[i] (r[i,t] − r̄[i]).
        for p in &mut pnl {
            *p -= pnl_mean;
        }
        let centred = pnl;
        let denominator = (n - 1) as f64;
        // σ_p² = Σ_t d[t]² / (N − 1) = vᵀ Σ v.
        let sigma = if constant {
            0.0
        } else {
            (centred.iter().map(|d| d * d).sum::<f64>() / denominator).sqrt()
        };
        if !sigma.is_finite() {
            return Err(ModelError::Internal(format!(
                "the portfolio's P&L standard deviation is {sigma}: positions or price moves \
                 are too large to value in f64"
            )));
        }

        let z = math::normal_quantile(params.confidence);
        let scale = params.horizon_days.sqrt();
        let value = z * sigma * scale;
        let centred_sum: f64 = centred.iter().sum();
        let breakdown = positions
            .iter()
            .zip(&values)
            .zip(&returns)
            .map(|((position, &v), r)| {
                let contribution = if sigma == 0.0 {
                    0.0
                } else {
                    // (Σ v)[i] = Σ_t (r[i,t] − r̄[i]) d[t] / (N − 1), with the
                    // r̄[i] term taken out of the loop (Σ_t d[t] is ~0).
                    let (r_d, r_sum) = dot_and_sum(r, &centred);
                    let sigma_v = (r_d - r_sum / n as f64 * centred_sum) / denominator;
                    z * scale * v * sigma_v / sigma
                };
                Ok(Contribution {
                    name: ctx.instrument(position.series)?.to_owned(),
                    value: contribution,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;

        Ok(Score {
            value,
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

/// The P&L of every scenario, `PnL[t] = Σ_i v[i] r[i,t]`, accumulated
/// position by position over contiguous slices. Fails with `internal` when
/// a P&L overflows.
fn scenario_pnl(values: &[f64], returns: &[&[f64]], n: usize) -> Result<Vec<f64>, ModelError> {
    let mut pnl = vec![0.0_f64; n];
    for (&v, r) in values.iter().zip(returns) {
        for (p, &x) in pnl.iter_mut().zip(r.iter()) {
            *p += v * x;
        }
    }
    if let Some((t, p)) = pnl.iter().enumerate().find(|(_, p)| !p.is_finite()) {
        return Err(ModelError::Internal(format!(
            "the P&L of scenario {} of {n} is {p}: positions or price moves are too large \
             to value in f64",
            t + 1
        )));
    }
    Ok(pnl)
}

/// `(Σ_t x[t] d[t], Σ_t x[t])` over equally long slices, with four
/// independent partial sums per total so consecutive additions do not wait
/// on each other (a serial sum is bound by the latency of one addition). The
/// order of the additions is fixed, so the result is the same on every
/// target.
fn dot_and_sum(x: &[f64], d: &[f64]) -> (f64, f64) {
    let mut dot = [0.0_f64; 4];
    let mut sum = [0.0_f64; 4];
    let (x4, d4) = (x.chunks_exact(4), d.chunks_exact(4));
    let (x_rest, d_rest) = (x4.remainder(), d4.remainder());
    for (xs, ds) in x4.zip(d4) {
        for lane in 0..4 {
            dot[lane] += xs[lane] * ds[lane];
            sum[lane] += xs[lane];
        }
    }
    let mut dot = (dot[0] + dot[1]) + (dot[2] + dot[3]);
    let mut sum = (sum[0] + sum[1]) + (sum[2] + sum[3]);
    for (&x, &d) in x_rest.iter().zip(d_rest) {
        dot += x * d;
        sum += x;
    }
    (dot, sum)
}

riskhost_sdk::export_model!(VarParametric);
