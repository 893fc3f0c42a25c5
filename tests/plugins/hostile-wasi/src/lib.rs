//! `hostile-wasi`: a test model that waits inside WASI calls, where epoch
//! interruption cannot reach it, and hoards WASI resources.
//!
//! `misbehave` picks the attack:
//! 1. `std::thread::sleep` for a minute (a monotonic-clock subscription and a
//!    `poll`, which is how std sleeps on wasip2);
//! 2. `pollable.block` on an instant that never comes;
//! 3. `poll` over a list of pollables none of which ever fires;
//! 4. creates pollables forever without dropping any, to fill the host's
//!    resource table with memory outside the guest's cap.

#[path = "../../shared.rs"]
#[allow(dead_code)]
mod shared;

use std::time::Duration;

use riskhost_sdk::{BatchContext, DataNeeds, Job, Model, ModelError, ModelInfo, Score};

pub struct HostileWasi;

impl Model for HostileWasi {
    fn info() -> ModelInfo {
        ModelInfo {
            name: env!("CARGO_PKG_NAME").to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: "Sandbox test model: waits in WASI or hoards WASI resources.".to_owned(),
            params: vec![shared::misbehave_param(
                "1 sleeps a minute, 2 blocks forever, 3 polls forever, 4 hoards pollables",
                4,
            )],
            data: DataNeeds {
                lookback_days: 1,
                lookback_param: None,
            },
        }
    }

    fn score(ctx: &BatchContext, job: &Job) -> Result<Score, ModelError> {
        attack(shared::misbehave(job));
        shared::gross_exposure(ctx, job)
    }
}

#[cfg(target_arch = "wasm32")]
fn attack(misbehave: u32) {
    use wasip2::clocks::monotonic_clock::{subscribe_duration, subscribe_instant};
    match misbehave {
        1 => std::thread::sleep(Duration::from_secs(60)),
        2 => subscribe_instant(u64::MAX).block(),
        3 => {
            let never: Vec<_> = (0..4).map(|_| subscribe_duration(u64::MAX)).collect();
            let refs: Vec<_> = never.iter().collect();
            std::hint::black_box(wasip2::io::poll::poll(&refs));
        }
        4 => {
            let mut hoard = Vec::new();
            loop {
                hoard.push(subscribe_duration(1));
                std::hint::black_box(hoard.len());
            }
        }
        _ => {}
    }
}

/// Natively (the SDK's test build) there is no WASI to attack.
#[cfg(not(target_arch = "wasm32"))]
fn attack(misbehave: u32) {
    if misbehave == 1 {
        std::thread::sleep(Duration::from_secs(60));
    }
}

riskhost_sdk::export_model!(HostileWasi);
