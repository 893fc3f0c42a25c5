// The `versioned` test model, shared by versioned-a and versioned-b, which
// `include!` it after defining `SCALE`: the builds are two versions of one
// model (same info().name) whose outputs differ by that factor, so a test
// can tell from a score alone which version computed it.
//
// score = SCALE × (Σ |quantity × last close| + offset); the breakdown is
// SCALE × |value| per position. `offset` exists so that callers can make
// every request a distinct computation (no memo hits).

use riskhost_sdk::{
    BatchContext, Contribution, DataNeeds, Job, Model, ModelError, ModelInfo, ParamSpec, Score,
    Unit,
};

pub struct Versioned;

impl Model for Versioned {
    fn info() -> ModelInfo {
        ModelInfo {
            name: "versioned".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: format!(
                "Test model: {SCALE} × (gross exposure at as_of + offset). Build {}.",
                env!("CARGO_PKG_NAME")
            ),
            params: vec![ParamSpec::real(
                "offset",
                "Added to the gross exposure before scaling.",
                0.0,
                0.0,
                1e12,
            )],
            data: DataNeeds {
                lookback_days: 0,
                lookback_param: None,
            },
        }
    }

    fn score(ctx: &BatchContext, job: &Job) -> Result<Score, ModelError> {
        let offset = job.params.first().copied().unwrap_or(0.0);
        let values = ctx.position_values(&job.portfolio)?;
        let breakdown = job
            .portfolio
            .positions
            .iter()
            .zip(&values)
            .map(|(p, v)| {
                Ok(Contribution {
                    name: ctx.instrument(p.series)?.to_owned(),
                    value: SCALE * v.abs(),
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let gross: f64 = values.iter().map(|v| v.abs()).sum();
        Ok(Score {
            value: SCALE * (gross + offset),
            unit: Unit::CurrencyAmount,
            breakdown,
        })
    }
}

riskhost_sdk::export_model!(Versioned);
