//! `var-parametric`: delta-normal (variance-covariance) value at risk.
//!
//! Treats the portfolio's daily P&L as normal with zero mean and the variance
//! implied by the sample covariance of its instruments' last `lookback_days`
//! daily returns, and reports the `confidence` quantile of the loss, scaled to
//! `horizon_days` by the square-root-of-time rule. The breakdown is the Euler
//! allocation. See `README.md` for the exact definitions and a worked example.

use riskhost_sdk::risk::{self, RiskParams};
use riskhost_sdk::{
    BatchContext, Contribution, Job, Model, ModelError, ModelInfo, Score, Unit, math,
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

pub use riskhost_sdk::risk::CONVENTIONS;

/// Delta-normal VaR. See the crate documentation.
pub struct VarParametric;

impl Model for VarParametric {
    fn info() -> ModelInfo {
        ModelInfo {
            name: env!("CARGO_PKG_NAME").to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: format!("{ABOUT}\n\n{CONVENTIONS}"),
            params: risk::params(),
            data: risk::data_needs(),
        }
    }

    fn score(ctx: &BatchContext, job: &Job) -> Result<Score, ModelError> {
        let params = RiskParams::parse(&job.params)?;
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

/// The P&L of every scenario, `PnL[t] = Σ_i v[i] r[i,t]`, accumulated
/// position by position over contiguous slices. Fails with `internal` when
/// a P&L overflows.
fn scenario_pnl(values: &[f64], returns: &[&[f64]], n: usize) -> Result<Vec<f64>, ModelError> {
    let mut pnl = vec![0.0_f64; n];
    for (&v, r) in values.iter().zip(returns) {
        math::add_scaled(&mut pnl, v, r);
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
