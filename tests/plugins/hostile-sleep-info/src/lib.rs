//! `hostile-sleep-info`: a test model that sleeps for a minute in `info()`.
//!
//! A sleep is a wait inside WASI, where epoch interruption cannot reach the
//! guest, so the load must still end at its deadline with a failure, and the
//! files after it must load without waiting for it.

use std::time::Duration;

use riskhost_sdk::{BatchContext, DataNeeds, Job, Model, ModelError, ModelInfo, Score};

pub struct HostileSleepInfo;

impl Model for HostileSleepInfo {
    fn info() -> ModelInfo {
        std::thread::sleep(Duration::from_secs(60));
        ModelInfo {
            name: env!("CARGO_PKG_NAME").to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: "Sandbox test model: sleeps in info().".to_owned(),
            params: vec![],
            data: DataNeeds {
                lookback_days: 1,
                lookback_param: None,
            },
        }
    }

    fn score(_ctx: &BatchContext, _job: &Job) -> Result<Score, ModelError> {
        Err(ModelError::Internal("never loaded".into()))
    }
}

riskhost_sdk::export_model!(HostileSleepInfo);
