//! `monte-carlo`: a Monte Carlo VaR whose draws come from two sources.
//!
//! Each of `scenarios` scenarios picks one of the last `lookback_days`
//! historical days at random and scales that day's returns by a random
//! volatility factor `exp(0.2 z − 0.02)`, z standard normal; the score is
//! the type-1 empirical `confidence` quantile of the scenario losses and the
//! breakdown is each position's loss in that scenario.
//!
//! The random stream is seeded with `job.seed` (what the SDK asks models to
//! do) XOR one `u64` read from WASI randomness through `getrandom` (what
//! a model ported from elsewhere would do). The sandbox test scores it many
//! times and expects bit-identical results, which holds only if the host
//! seeds WASI randomness from the job's content as well.

use riskhost_sdk::rng::SplitMix64;
use riskhost_sdk::{
    BatchContext, Contribution, DataNeeds, Job, Model, ModelError, ModelInfo, ParamSpec, Score,
    Unit, math,
};

pub struct MonteCarlo;

impl Model for MonteCarlo {
    fn info() -> ModelInfo {
        ModelInfo {
            name: env!("CARGO_PKG_NAME").to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: "Sandbox test model: bootstrap Monte Carlo VaR seeded by job.seed and \
                          WASI randomness."
                .to_owned(),
            params: vec![
                ParamSpec::real("confidence", "Loss quantile.", 0.99, 0.5, 0.9999),
                ParamSpec::integer(
                    "scenarios",
                    "Monte Carlo scenarios.",
                    10_000,
                    100,
                    1_000_000,
                ),
                ParamSpec::integer("lookback_days", "Historical days sampled.", 250, 2, 5000),
            ],
            data: DataNeeds {
                lookback_days: 250,
                lookback_param: Some("lookback_days".into()),
            },
        }
    }

    fn score(ctx: &BatchContext, job: &Job) -> Result<Score, ModelError> {
        let &[confidence, scenarios, lookback] = job.params.as_slice() else {
            return Err(ModelError::InvalidInput("expected 3 parameters".into()));
        };
        let (scenarios, lookback) = (scenarios as usize, lookback as usize);
        let positions = &job.portfolio.positions;
        let values = ctx.position_values(&job.portfolio)?;
        let returns = positions
            .iter()
            .map(|p| ctx.returns(p.series, lookback))
            .collect::<Result<Vec<_>, _>>()?;
        let day_loss = |t: usize| -> f64 {
            -values
                .iter()
                .zip(&returns)
                .map(|(v, r)| v * r[t])
                .sum::<f64>()
        };

        let entropy = getrandom::u64()
            .map_err(|e| ModelError::Internal(format!("no WASI randomness: {e}")))?;
        let mut rng = SplitMix64::new(job.seed ^ entropy);
        let mut draws: Vec<(f64, usize, f64)> = (0..scenarios)
            .map(|_| {
                let t = rng.next_index(lookback);
                let scale = (0.2 * rng.next_standard_normal() - 0.02).exp();
                (day_loss(t) * scale, t, scale)
            })
            .collect();
        let k = math::quantile_rank(draws.len(), confidence);
        draws.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0));
        let (loss, t, scale) = draws[k - 1];

        let breakdown = positions
            .iter()
            .zip(&values)
            .zip(&returns)
            .map(|((p, v), r)| {
                Ok(Contribution {
                    name: ctx.instrument(p.series)?.to_owned(),
                    value: -(v * r[t]) * scale,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Score {
            value: loss,
            unit: Unit::CurrencyAmount,
            breakdown,
        })
    }
}

riskhost_sdk::export_model!(MonteCarlo);
