//! `quant-faulty`: a test model that fails on request, so the tests of
//! `riskhost model test` can check what a quant is told in each case.
//!
//! Parameter `fault` (integer, default 0) picks the behaviour: 0 scores the
//! gross exposure, 1 panics with a message, 2 returns insufficient-data
//! naming the first instrument, 3 adds the job's position in its call to
//! the score (a model whose result depends on its batch), 4 prints a line
//! and scores.

use std::sync::atomic::{AtomicU32, Ordering};

use riskhost_sdk::{
    BatchContext, DataNeeds, Job, Model, ModelError, ModelInfo, ParamSpec, Score, Unit,
};

pub struct Faulty;

/// Survives across jobs of one call only: every call gets a fresh instance,
/// so fault 3 differs between jobs of one call, not between calls.
static CALLS: AtomicU32 = AtomicU32::new(0);

impl Model for Faulty {
    fn info() -> ModelInfo {
        ModelInfo {
            name: "quant-faulty".into(),
            version: "1.0.0".into(),
            description: "Fails on request (tests only).".into(),
            params: vec![ParamSpec::integer(
                "fault",
                "0 ok, 1 panic, 2 insufficient data, 3 batch-dependent, 4 print",
                0,
                0,
                4,
            )],
            data: DataNeeds {
                lookback_days: 1,
                lookback_param: None,
            },
        }
    }

    fn score(ctx: &BatchContext, job: &Job) -> Result<Score, ModelError> {
        let values = ctx.position_values(&job.portfolio)?;
        let gross: f64 = values.iter().map(|v| v.abs()).sum();
        let first = ctx.instrument(job.portfolio.positions[0].series)?;
        let value = match job.params.first().copied().unwrap_or(0.0) as u32 {
            1 => panic!("covariance matrix is not positive definite for {first}"),
            2 => {
                return Err(ModelError::InsufficientData(format!(
                    "{first} has no implied volatility surface"
                )));
            }
            3 => gross + f64::from(CALLS.fetch_add(1, Ordering::Relaxed)),
            4 => {
                println!("debug: gross exposure of {first}… is {gross}");
                gross
            }
            _ => gross,
        };
        Ok(Score {
            value,
            unit: Unit::CurrencyAmount,
            breakdown: vec![],
        })
    }
}

riskhost_sdk::export_model!(Faulty);
