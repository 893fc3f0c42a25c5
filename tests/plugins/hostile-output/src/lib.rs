//! `hostile-output`: a test model whose answer is too large to accept.
//!
//! `misbehave` picks the attack: 1 returns a million breakdown entries (as
//! much as fits in the default 64 MiB memory cap), 2 one 16 MiB breakdown
//! name; both must be refused while the host lifts them, before it allocates
//! their host copy. 3 returns 20,000 entries and 4 a 5,000-byte name: small
//! enough to lift, but over the per-score caps the host checks afterwards.

#[path = "../../shared.rs"]
#[allow(dead_code)]
mod shared;

use riskhost_sdk::{
    BatchContext, Contribution, DataNeeds, Job, Model, ModelError, ModelInfo, Score, Unit,
};

pub struct HostileOutput;

impl Model for HostileOutput {
    fn info() -> ModelInfo {
        ModelInfo {
            name: env!("CARGO_PKG_NAME").to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: "Sandbox test model: returns oversized outputs with misbehave=1..4."
                .to_owned(),
            params: vec![shared::misbehave_param(
                "1 a million entries, 2 a 16 MiB name, 3 20,000 entries, 4 a 5,000-byte name",
                4,
            )],
            data: DataNeeds {
                lookback_days: 1,
                lookback_param: None,
            },
        }
    }

    fn score(ctx: &BatchContext, job: &Job) -> Result<Score, ModelError> {
        let breakdown = match shared::misbehave(job) {
            1 => entries(1_000_000, ""),
            2 => entries(1, &"x".repeat(16 << 20)),
            3 => entries(20_000, "x"),
            4 => entries(1, &"x".repeat(5_000)),
            _ => return shared::gross_exposure(ctx, job),
        };
        Ok(Score {
            value: 1.0,
            unit: Unit::Index,
            breakdown,
        })
    }
}

fn entries(count: usize, name: &str) -> Vec<Contribution> {
    let mut out = Vec::with_capacity(count);
    out.resize(
        count,
        Contribution {
            name: name.to_owned(),
            value: 0.0,
        },
    );
    out
}

riskhost_sdk::export_model!(HostileOutput);
