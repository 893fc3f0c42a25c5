//! `var-historical`: historical-simulation value at risk.
//!
//! Revalues today's positions under each of the last `lookback_days` daily
//! returns of their instruments and reports the type-1 empirical quantile of
//! the resulting losses at `confidence`, scaled to `horizon_days` by the
//! square-root-of-time rule. The breakdown is each position's loss in the
//! scenario that sets the VaR. See `README.md` for the exact definitions and a
//! worked example.

use riskhost_sdk::risk::{self, RiskParams};
use riskhost_sdk::{
    BatchContext, Contribution, Job, Model, ModelError, ModelInfo, Score, Unit, math,
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

pub use riskhost_sdk::risk::CONVENTIONS;

/// Historical-simulation VaR. See the crate documentation.
pub struct VarHistorical;

impl Model for VarHistorical {
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

        let mut scenarios = risk::scenario_losses(&values, &returns, params.lookback_days)?;
        let k = math::quantile_rank(scenarios.len(), params.confidence);
        scenarios.select_nth_unstable_by(k - 1, risk::by_loss_then_date);
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

riskhost_sdk::export_model!(VarHistorical);
