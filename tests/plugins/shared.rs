//! Code shared by the sandbox test models, included with `#[path]` (the
//! models are cdylibs, so there is no library crate to share it through).
//!
//! Every hostile model must pass the host's warm-up to be served at all, so
//! each one behaves unless a job's `misbehave` parameter says otherwise, and
//! when it behaves it scores the portfolio's gross exposure.

use riskhost_sdk::{BatchContext, Contribution, Job, ModelError, ParamSpec, Score, Unit};

/// The `misbehave` parameter: 0 (the default, used by the warm-up) behaves.
pub(crate) fn misbehave_param(what: &str, max: u32) -> ParamSpec {
    ParamSpec::integer(
        "misbehave",
        &format!("0 (default) scores gross exposure; {what}."),
        0,
        0,
        max,
    )
}

/// The job's `misbehave` value, declared as the model's first parameter.
pub(crate) fn misbehave(job: &Job) -> u32 {
    job.params.first().map_or(0, |v| *v as u32)
}

/// Σ |quantity × close|, one contribution per position.
pub(crate) fn gross_exposure(ctx: &BatchContext, job: &Job) -> Result<Score, ModelError> {
    let values = ctx.position_values(&job.portfolio)?;
    let breakdown = job
        .portfolio
        .positions
        .iter()
        .zip(&values)
        .map(|(p, v)| {
            Ok(Contribution {
                name: ctx.instrument(p.series)?.to_owned(),
                value: v.abs(),
            })
        })
        .collect::<Result<Vec<_>, ModelError>>()?;
    Ok(Score {
        value: values.iter().map(|v| v.abs()).sum(),
        unit: Unit::CurrencyAmount,
        breakdown,
    })
}
