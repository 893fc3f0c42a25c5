//! `hostile-warmup`: a test model that hangs the moment it is loaded.
//!
//! `info()` loops forever, so the host's load-time checks must stop it at the
//! deadline, record the failure, and go on serving every other model.

use riskhost_sdk::{BatchContext, Job, Model, ModelError, ModelInfo, Score};

pub struct HostileWarmup;

impl Model for HostileWarmup {
    fn info() -> ModelInfo {
        let mut x = 0u64;
        loop {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }

    fn score(_ctx: &BatchContext, _job: &Job) -> Result<Score, ModelError> {
        Err(ModelError::Internal("never loaded".into()))
    }
}

riskhost_sdk::export_model!(HostileWarmup);
