//! `hostile-loop`: a test model that never returns when asked to misbehave.
//!
//! With `misbehave = 1` it spins forever without touching memory or calling
//! the host, the worst case for a deadline: only epoch interruption (or fuel)
//! can stop it.

#[path = "../../shared.rs"]
#[allow(dead_code)]
mod shared;

use riskhost_sdk::{BatchContext, DataNeeds, Job, Model, ModelError, ModelInfo, Score};

pub struct HostileLoop;

impl Model for HostileLoop {
    fn info() -> ModelInfo {
        ModelInfo {
            name: env!("CARGO_PKG_NAME").to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: "Sandbox test model: loops forever with misbehave=1.".to_owned(),
            params: vec![shared::misbehave_param("1 loops forever", 1)],
            data: DataNeeds {
                lookback_days: 1,
                lookback_param: None,
            },
        }
    }

    fn score(ctx: &BatchContext, job: &Job) -> Result<Score, ModelError> {
        if shared::misbehave(job) == 1 {
            // black_box keeps the optimiser from proving the loop pointless.
            let mut x = 0u64;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        shared::gross_exposure(ctx, job)
    }
}

riskhost_sdk::export_model!(HostileLoop);
