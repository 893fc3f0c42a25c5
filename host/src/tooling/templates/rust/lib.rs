//! {{name}}: historical value at risk, a riskhost model.
//!
//! Scaffolded by `riskhost new`: a small but complete model to change into
//! your own. It shows the parts every model has: `info()` (name, version,
//! parameters, the price history it needs) and `score()` (one job: a
//! portfolio and its parameter values), errors a client can act on, and a
//! breakdown that explains the number.
//!
//! VaR = the loss at the `confidence` quantile of the portfolio's losses over
//! the last `lookback_days` daily returns (type-1 empirical quantile: the
//! k-th smallest loss, k = ⌈confidence × N⌉). The breakdown is each
//! position's loss in that scenario, so it sums to the VaR.

use riskhost_sdk::{
    BatchContext, Contribution, DataNeeds, Job, Model, ModelError, ModelInfo, ParamSpec, Score,
    Unit, math,
};

pub struct ThisModel;

impl Model for ThisModel {
    fn info() -> ModelInfo {
        ModelInfo {
            // The name clients score with; lower-kebab-case.
            name: "{{name}}".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Historical VaR: the k-th smallest of the last N daily portfolio \
                          losses, k = ceil(confidence × N), N = lookback_days. Breakdown: each \
                          position's loss in that scenario."
                .into(),
            // The host checks bounds and whole numbers before the model is
            // called, and passes values in this order.
            params: vec![
                ParamSpec::real("confidence", "Confidence level, e.g. 0.99.", 0.99, 0.5, 0.9999),
                ParamSpec::integer("lookback_days", "Daily returns used as scenarios.", 250, 2, 5000),
            ],
            data: DataNeeds {
                lookback_days: 250,
                // The host sends lookback_days + 1 closes per instrument.
                lookback_param: Some("lookback_days".into()),
            },
        }
    }

    fn score(ctx: &BatchContext, job: &Job) -> Result<Score, ModelError> {
        let &[confidence, lookback_days] = job.params.as_slice() else {
            return Err(ModelError::InvalidInput(format!(
                "expected 2 parameter values (confidence, lookback_days), got {}",
                job.params.len()
            )));
        };
        let n = lookback_days as usize;
        // Position values at the as-of date, and each instrument's last n
        // returns (an insufficient-data error names the instrument).
        let values = ctx.position_values(&job.portfolio)?;
        let returns = job
            .portfolio
            .positions
            .iter()
            .map(|p| ctx.returns(p.series, n))
            .collect::<Result<Vec<_>, _>>()?;

        // Loss of each scenario t: −Σ_i v[i] × r[i][t].
        let losses: Vec<f64> = (0..n)
            .map(|t| {
                let mut pnl = 0.0;
                for (v, r) in values.iter().zip(&returns) {
                    pnl += v * r[t];
                }
                -pnl
            })
            .collect();

        // The scenario at the quantile: the k-th smallest loss (stable sort,
        // so ties resolve to the earlier date).
        let k = math::quantile_rank(n, confidence);
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| losses[a].total_cmp(&losses[b]));
        let t = order[k - 1];

        let breakdown = job
            .portfolio
            .positions
            .iter()
            .zip(values.iter().zip(&returns))
            .map(|(p, (v, r))| {
                Ok(Contribution {
                    name: ctx.instrument(p.series)?.to_owned(),
                    value: -v * r[t],
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Score {
            value: losses[t],
            unit: Unit::CurrencyAmount,
            breakdown,
        })
    }
}

riskhost_sdk::export_model!(ThisModel);

// The model is a plain Rust library off wasm: test it natively with `cargo test`.
#[cfg(test)]
mod tests {
    use super::*;
    use riskhost_sdk::{MarketData, Portfolio, Position, PriceSeries};

    #[test]
    fn var_is_the_quantile_loss_and_the_breakdown_sums_to_it() {
        // One instrument, closes 100 → 110 → 99 → 99: returns +10%, −10%, 0.
        let market = MarketData {
            as_of: "2024-01-04".into(),
            dates: vec![0, 1, 2, 3],
            series: vec![PriceSeries {
                instrument: "ACME".into(),
                closes: vec![100.0, 110.0, 99.0, 99.0],
            }],
        };
        let job = Job {
            portfolio: Portfolio {
                id: "p".into(),
                positions: vec![Position { series: 0, quantity: 10.0 }],
            },
            params: vec![0.99, 3.0],
            seed: 0,
        };
        let ctx = BatchContext::new(&market);
        let score = ThisModel::score(&ctx, &job).expect("score");
        // v = 10 × 99 = 990; losses −99, 99, 0; k = ⌈2.97⌉ = 3 → 99.
        assert!((score.value - 99.0).abs() < 1e-9, "{}", score.value);
        let total: f64 = score.breakdown.iter().map(|c| c.value).sum();
        assert!((total - score.value).abs() < 1e-9);
    }
}
