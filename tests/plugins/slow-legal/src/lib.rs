//! `slow-legal`: a test model that is slow but well within its rights.
//!
//! It spends `steps_millions` million steps of pure arithmetic (about a
//! quarter of a second by default on a 2020s x86 core) before scoring gross
//! exposure. The sandbox must let it finish: deadlines are for runaway
//! models, not for slow ones.

#[path = "../../shared.rs"]
#[allow(dead_code)]
mod shared;

use riskhost_sdk::{BatchContext, DataNeeds, Job, Model, ModelError, ModelInfo, ParamSpec, Score};

/// Calibrated so the default takes roughly 250 ms in a wasmtime instance.
const DEFAULT_STEPS_MILLIONS: u32 = 150;

pub struct SlowLegal;

impl Model for SlowLegal {
    fn info() -> ModelInfo {
        ModelInfo {
            name: env!("CARGO_PKG_NAME").to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: "Sandbox test model: busy for a while, then gross exposure.".to_owned(),
            params: vec![ParamSpec::integer(
                "steps_millions",
                "Millions of arithmetic steps to spend before answering.",
                DEFAULT_STEPS_MILLIONS,
                1,
                100_000,
            )],
            data: DataNeeds {
                lookback_days: 1,
                lookback_param: None,
            },
        }
    }

    fn score(ctx: &BatchContext, job: &Job) -> Result<Score, ModelError> {
        let steps = job.params.first().map_or(0, |v| *v as u64) * 1_000_000;
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for i in 0..steps {
            x = std::hint::black_box(x ^ (x << 7) ^ (x >> 9) ^ i);
        }
        let mut score = shared::gross_exposure(ctx, job)?;
        // Mixes the work into the score without changing it, so it cannot be skipped.
        score.value += (x == 0) as u8 as f64 * f64::MIN_POSITIVE;
        Ok(score)
    }
}

riskhost_sdk::export_model!(SlowLegal);
