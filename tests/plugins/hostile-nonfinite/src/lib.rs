//! `hostile-nonfinite`: a test model whose score is not a number.
//!
//! `misbehave` picks the field: 1 a NaN value, 2 a +Inf value, 3 a NaN
//! breakdown entry, 4 a −Inf breakdown entry. JSON cannot carry any of
//! them; the host must answer the job as the model's internal error, and
//! never memoize it.

#[path = "../../shared.rs"]
#[allow(dead_code)]
mod shared;

use riskhost_sdk::{BatchContext, DataNeeds, Job, Model, ModelError, ModelInfo, Score};

pub struct HostileNonfinite;

impl Model for HostileNonfinite {
    fn info() -> ModelInfo {
        ModelInfo {
            name: env!("CARGO_PKG_NAME").to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: "Sandbox test model: returns non-finite scores with misbehave=1..4."
                .to_owned(),
            params: vec![shared::misbehave_param(
                "1 a NaN value, 2 a +Inf value, 3 a NaN breakdown entry, 4 a -Inf breakdown entry",
                4,
            )],
            data: DataNeeds {
                lookback_days: 1,
                lookback_param: None,
            },
        }
    }

    fn score(ctx: &BatchContext, job: &Job) -> Result<Score, ModelError> {
        let mut score = shared::gross_exposure(ctx, job)?;
        let (bad, in_breakdown) = match shared::misbehave(job) {
            1 => (f64::NAN, false),
            2 => (f64::INFINITY, false),
            3 => (f64::NAN, true),
            4 => (f64::NEG_INFINITY, true),
            _ => return Ok(score),
        };
        // The last position's contribution (every portfolio has one).
        match score.breakdown.last_mut() {
            Some(last) if in_breakdown => last.value = bad,
            _ => score.value = bad,
        }
        Ok(score)
    }
}

riskhost_sdk::export_model!(HostileNonfinite);
