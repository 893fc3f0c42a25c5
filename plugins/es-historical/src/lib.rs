//! `es-historical`: historical-simulation expected shortfall.
//!
//! Revalues today's positions under each of the last `lookback_days` daily
//! returns of their instruments and reports the mean of the losses at and
//! beyond the type-1 empirical quantile at `confidence` (the scenarios that
//! `var-historical` ranks k and above), scaled to `horizon_days` by the
//! square-root-of-time rule. The breakdown is each position's mean loss over
//! those tail scenarios. See `README.md` for the exact definitions and a
//! worked example.

use riskhost_sdk::risk::{self, RiskParams};
use riskhost_sdk::{
    BatchContext, Contribution, Job, Model, ModelError, ModelInfo, Score, Unit, math,
};

/// What this model computes, for `info().description`.
const ABOUT: &str = "\
Historical-simulation expected shortfall (ES, also called CVaR): the mean \
loss of today's positions over the historical scenarios at and beyond the \
historical VaR, i.e. the N − k + 1 largest of the N = lookback_days scenario \
losses.
- Formula: `ES = (L(k) + L(k+1) + … + L(N)) / (N − k + 1) × √horizon_days`, \
where `L(1) ≤ … ≤ L(N)` are the scenario losses sorted ascending and \
`k = ⌈confidence × N⌉`, computed as `⌈confidence × N − 1e-9⌉` and clamped to \
[1, N]: the rank of the type-1 empirical quantile (inverse of the empirical \
CDF, Hyndman & Fan definition 1) that var-historical reports. Example: \
N = 250, confidence = 0.99 gives k = 248, the mean of the 3 largest losses. \
ES ≥ VaR of var-historical at the same parameters.
- Ties: equal losses are ordered by scenario date, oldest first, so the tail \
scenarios T (ranks k to N) are unique.
- Breakdown: position i contributes the mean over the tail scenarios t in T \
of `−v[i] × r[i,t]`, times `√horizon_days`.";

pub use riskhost_sdk::risk::CONVENTIONS;

/// Historical-simulation expected shortfall. See the crate documentation.
pub struct EsHistorical;

impl Model for EsHistorical {
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
        let n = scenarios.len();
        let k = math::quantile_rank(n, params.confidence);
        scenarios.select_nth_unstable_by(k - 1, risk::by_loss_then_date);
        // After the selection, ranks k..=N sit at k-1.. in some order; put
        // them in date order so every sum below has a fixed order.
        let tail = &mut scenarios[k - 1..];
        tail.sort_unstable_by_key(|&(_, t)| t);
        let tail_len = tail.len() as f64;
        let tail_loss: f64 = tail.iter().map(|&(loss, _)| loss).sum();

        let scale = params.horizon_days.sqrt();
        let breakdown = positions
            .iter()
            .zip(&values)
            .zip(&returns)
            .map(|((position, v), r)| {
                let tail_return: f64 = tail.iter().map(|&(_, t)| r[t as usize]).sum();
                Ok(Contribution {
                    name: ctx.instrument(position.series)?.to_owned(),
                    value: -(v * tail_return) / tail_len * scale,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;

        Ok(Score {
            value: tail_loss / tail_len * scale,
            unit: Unit::CurrencyAmount,
            breakdown,
        })
    }
}

riskhost_sdk::export_model!(EsHistorical);
