//! `slow-exposure`: a test model that burns CPU before answering.
//!
//! Gross exposure (the sum of absolute position values at as-of), after
//! `work` rounds of busy work. The cache tests use it to keep a computation
//! in flight long enough for a herd of identical requests to pile up behind
//! it (single-flight); `work` defaults to 0 so the host's warm-up call is
//! instant.

#[path = "../../shared.rs"]
#[allow(dead_code)]
mod shared;

use riskhost_sdk::{BatchContext, DataNeeds, Job, Model, ModelError, ModelInfo, ParamSpec, Score};

pub struct SlowExposure;

impl Model for SlowExposure {
    fn info() -> ModelInfo {
        ModelInfo {
            name: env!("CARGO_PKG_NAME").to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: "Gross exposure after `work` rounds of busy work (a test model).".into(),
            params: vec![ParamSpec::integer(
                "work",
                "Rounds of busy work, in millions.",
                0,
                0,
                10_000,
            )],
            data: DataNeeds {
                lookback_days: 0,
                lookback_param: None,
            },
        }
    }

    fn score(ctx: &BatchContext, job: &Job) -> Result<Score, ModelError> {
        let rounds = job.params.first().copied().unwrap_or(0.0) as u64 * 1_000_000;
        // xorshift: cheap, serial and opaque to the optimiser.
        let mut x = job.seed | 1;
        for _ in 0..rounds {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        std::hint::black_box(x);
        shared::gross_exposure(ctx, job)
    }
}

riskhost_sdk::export_model!(SlowExposure);
