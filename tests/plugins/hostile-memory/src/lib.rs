//! `hostile-memory`: a test model that allocates until the host says no.
//!
//! With `misbehave = 1` it keeps allocating 1 MiB blocks and writing to every
//! page, so the memory is really resident, until `memory.grow` fails at the
//! host's cap and the allocator aborts. The host must report resource
//! exhaustion and give the memory back.

#[path = "../../shared.rs"]
#[allow(dead_code)]
mod shared;

use riskhost_sdk::{BatchContext, DataNeeds, Job, Model, ModelError, ModelInfo, Score};

pub struct HostileMemory;

impl Model for HostileMemory {
    fn info() -> ModelInfo {
        ModelInfo {
            name: env!("CARGO_PKG_NAME").to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: "Sandbox test model: allocates without bound with misbehave=1.".to_owned(),
            params: vec![shared::misbehave_param(
                "1 allocates until it is stopped",
                1,
            )],
            data: DataNeeds {
                lookback_days: 1,
                lookback_param: None,
            },
        }
    }

    fn score(ctx: &BatchContext, job: &Job) -> Result<Score, ModelError> {
        if shared::misbehave(job) == 1 {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                let mut block = vec![0u8; 1 << 20];
                for page in block.chunks_mut(4096) {
                    page[0] = 1;
                }
                hoard.push(std::hint::black_box(block));
            }
        }
        shared::gross_exposure(ctx, job)
    }
}

riskhost_sdk::export_model!(HostileMemory);
