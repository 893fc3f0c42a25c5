//! `hostile-recursion`: a test model that recurses without bound.
//!
//! With `misbehave = 1` it calls itself until the wasm stack runs out. The
//! recursion keeps its state in wasm locals (no linear-memory shadow stack),
//! so it is the host's stack cap, not the model's own memory, that stops it.

#[path = "../../shared.rs"]
#[allow(dead_code)]
mod shared;

use riskhost_sdk::{BatchContext, DataNeeds, Job, Model, ModelError, ModelInfo, Score};

pub struct HostileRecursion;

impl Model for HostileRecursion {
    fn info() -> ModelInfo {
        ModelInfo {
            name: env!("CARGO_PKG_NAME").to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: "Sandbox test model: recurses without bound with misbehave=1.".to_owned(),
            params: vec![shared::misbehave_param("1 recurses without bound", 1)],
            data: DataNeeds {
                lookback_days: 1,
                lookback_param: None,
            },
        }
    }

    fn score(ctx: &BatchContext, job: &Job) -> Result<Score, ModelError> {
        if shared::misbehave(job) == 1 {
            let depth = descend(0);
            return Err(ModelError::Internal(format!(
                "the recursion ended at depth {depth}"
            )));
        }
        shared::gross_exposure(ctx, job)
    }
}

/// Never ends: `black_box` hides that the base case is unreachable, and the
/// addition after the call keeps it from becoming a loop.
#[inline(never)]
fn descend(depth: u64) -> u64 {
    if std::hint::black_box(depth) == u64::MAX {
        return depth;
    }
    descend(depth + 1).wrapping_add(std::hint::black_box(depth))
}

riskhost_sdk::export_model!(HostileRecursion);
