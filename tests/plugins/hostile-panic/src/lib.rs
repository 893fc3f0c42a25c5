//! `hostile-panic`: a test model that panics (`misbehave = 1`) or calls
//! `exit` (`misbehave = 2`) when asked to misbehave.
//!
//! A Rust panic in a wasm component prints its message to stderr and aborts
//! with an `unreachable` trap. The host must turn that into a `model_trap`
//! error carrying the model's own message and where in the model it died.
//! This crate keeps its name section (see the workspace manifest) so the
//! trap's backtrace can name the functions.

#[path = "../../shared.rs"]
#[allow(dead_code)]
mod shared;

use riskhost_sdk::{BatchContext, DataNeeds, Job, Model, ModelError, ModelInfo, Score};

pub struct HostilePanic;

impl Model for HostilePanic {
    fn info() -> ModelInfo {
        ModelInfo {
            name: env!("CARGO_PKG_NAME").to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: "Sandbox test model: panics with misbehave=1, exits with 2.".to_owned(),
            params: vec![shared::misbehave_param("1 panics, 2 calls exit(3)", 2)],
            data: DataNeeds {
                lookback_days: 1,
                lookback_param: None,
            },
        }
    }

    fn score(ctx: &BatchContext, job: &Job) -> Result<Score, ModelError> {
        match shared::misbehave(job) {
            1 => explode(job.portfolio.positions.len()),
            2 => std::process::exit(3),
            _ => {}
        }
        shared::gross_exposure(ctx, job)
    }
}

#[inline(never)]
fn explode(positions: usize) -> ! {
    panic!("hostile-panic was told to misbehave ({positions} positions)")
}

riskhost_sdk::export_model!(HostilePanic);
