//! The riskhost SDK: everything a Rust model author depends on.
//!
//! Implement [`Model`] for a unit struct and call [`export_model!`] once; the
//! crate builds to a `wasm32-wasip2` component that riskhost can load. The
//! contract's types are re-exported here, [`BatchContext`] gives each job cheap
//! access to the batch's prices and returns, and [`math`] holds the tested
//! statistics the example models are built from.
//!
//! ```ignore
//! use riskhost_sdk::*;
//! struct Gross;
//! impl Model for Gross {
//!     fn info() -> ModelInfo { /* name, version, params, data needs */ }
//!     fn score(ctx: &BatchContext, job: &Job) -> Result<Score, ModelError> { /* … */ }
//! }
//! export_model!(Gross);
//! ```

pub mod math;
pub mod risk;
pub mod rng;

mod context;

pub use context::BatchContext;

/// Bindings generated from `wit/model.wit`. Authors rarely need them directly.
#[allow(clippy::too_many_arguments)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "model",
        pub_export_macro: true,
        export_macro_name: "export_model_world",
        default_bindings_module: "riskhost_sdk::bindings",
        additional_derives: [PartialEq, Clone],
    });
}

pub use bindings::riskhost::model::types::{
    Contribution, DataNeeds, Job, MarketData, ModelError, ModelInfo, ParamSpec, Portfolio,
    Position, PriceSeries, Score, Unit,
};

/// A risk model. Implement it for a unit struct and pass the struct to
/// [`export_model!`].
///
/// Models are pure: everything they need arrives in the arguments. Use
/// `job.seed` (see [`rng`]) for any randomness so scores stay reproducible.
pub trait Model {
    /// Name, version, parameters and data needs. Called once at load time.
    fn info() -> ModelInfo;

    /// Scores one job. `ctx` is shared by every job of the batch, so values
    /// derived from market data (e.g. returns) are computed once per batch.
    fn score(ctx: &BatchContext, job: &Job) -> Result<Score, ModelError>;

    /// Scores a whole batch. The default scores each job with [`Model::score`]
    /// against one shared [`BatchContext`]; override it only to share more
    /// work across jobs (the result must not depend on the batch's make-up).
    fn score_batch(market: &MarketData, jobs: &[Job]) -> Vec<Result<Score, ModelError>> {
        let ctx = BatchContext::new(market);
        jobs.iter().map(|job| Self::score(&ctx, job)).collect()
    }
}

/// Exports a [`Model`] implementation as the component's `model` world.
///
/// Expands to nothing on non-wasm targets, so the same crate can be unit
/// tested and benchmarked natively.
#[macro_export]
macro_rules! export_model {
    ($model:ty) => {
        #[cfg(target_family = "wasm")]
        mod __riskhost_model_export {
            use super::*;

            struct Exported;

            impl $crate::bindings::Guest for Exported {
                fn info() -> $crate::ModelInfo {
                    <$model as $crate::Model>::info()
                }

                fn score_batch(
                    market: $crate::MarketData,
                    jobs: ::std::vec::Vec<$crate::Job>,
                ) -> ::std::vec::Vec<::std::result::Result<$crate::Score, $crate::ModelError>> {
                    <$model as $crate::Model>::score_batch(&market, &jobs)
                }
            }

            $crate::bindings::export_model_world!(Exported with_types_in $crate::bindings);
        }
    };
}

impl ModelError {
    /// The message carried by any variant.
    pub fn message(&self) -> &str {
        match self {
            ModelError::InvalidInput(m)
            | ModelError::InsufficientData(m)
            | ModelError::Internal(m) => m,
        }
    }
}

impl ParamSpec {
    /// Builds a real-valued parameter.
    pub fn real(name: &str, description: &str, default_value: f64, min: f64, max: f64) -> Self {
        ParamSpec {
            name: name.to_owned(),
            description: description.to_owned(),
            default_value,
            min,
            max,
            integer: false,
        }
    }

    /// Builds a whole-number parameter.
    pub fn integer(name: &str, description: &str, default_value: u32, min: u32, max: u32) -> Self {
        ParamSpec {
            integer: true,
            ..ParamSpec::real(
                name,
                description,
                default_value.into(),
                min.into(),
                max.into(),
            )
        }
    }
}
