// The `versioned` test model, shared by versioned-a and versioned-b, which
// `include!` it after defining `SCALE`: the builds are two versions of one
// model (same info().name) whose outputs differ by that factor, so a test
// can tell from a score alone which version computed it.
//
// score = SCALE × (Σ |quantity × last close| + offset); the breakdown is
// SCALE × |value| per position. `offset` exists so that callers can make
// every request a distinct computation (no memo hits).
//
// An includer may also define `MISBEHAVIOUR` (`Misbehaviour::Fail` or
// `::Hang`): the builds the challenger tests use as a failing and a
// hanging challenger of the same model. Without it the build scores. Like a
// model that passed its checks and misbehaves on real traffic only, they
// score the host's warm-up job at load (its instruments are `WARMUP-…`).

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
        let warm_up = job.portfolio.positions.iter().any(|p| {
            ctx.instrument(p.series)
                .is_ok_and(|name| name.starts_with("WARMUP-"))
        });
        match MISBEHAVIOUR {
            _ if warm_up => {}
            Misbehaviour::Score => {}
            Misbehaviour::Fail => {
                return Err(ModelError::Internal(format!(
                    "build {} always fails",
                    env!("CARGO_PKG_NAME")
                )));
            }
            Misbehaviour::Hang => {
                // Until the host's deadline stops the call.
                let mut x = 1u64;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
        }
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

/// What a build does instead of scoring, if anything.
#[allow(dead_code)]
enum Misbehaviour {
    Score,
    Fail,
    Hang,
}

riskhost_sdk::export_model!(Versioned);
