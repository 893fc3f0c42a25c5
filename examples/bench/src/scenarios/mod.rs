//! The benchmark scenarios, one module each.
//!
//! A scenario is a function from the shared [`Context`] to result [`Row`]s.
//! To add one (HTTP load, batch sizes, hot-swap, start-up, memory…), write
//! `scenarios/<name>.rs` with a `pub fn run(ctx: &Context) -> anyhow::Result<Vec<Row>>`
//! and list it in [`ALL`]; the runner, the table and BENCHMARKS.md need no
//! change.

pub mod compute;
pub mod overhead;
pub mod sizes;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use riskhost::engine::{LoadedModel, ModelEngine, SandboxLimits};

use crate::harness::Sampling;
use crate::report::Row;

/// A scenario: its name (for progress output) and what runs it.
pub struct Scenario {
    pub name: &'static str,
    pub run: fn(&Context) -> anyhow::Result<Vec<Row>>,
}

/// Every scenario, in the order of the table.
pub const ALL: &[Scenario] = &[
    Scenario {
        name: "model compute, wasm vs native",
        run: compute::run,
    },
    Scenario {
        name: "instantiate + call overhead",
        run: overhead::run,
    },
    Scenario {
        name: "component sizes",
        run: sizes::run,
    },
];

/// The example models: file stem in `plugins/dist/` = model name.
pub const MODELS: [&str; 3] = ["var-historical", "var-parametric", "es-historical"];

/// A model as the product runs it, with where it came from.
pub struct Model {
    pub name: &'static str,
    pub path: PathBuf,
    pub size_bytes: usize,
    pub loaded: LoadedModel,
}

/// What every scenario shares: options, the engine and the loaded models.
pub struct Context {
    pub root: PathBuf,
    pub sampling: Sampling,
    pub engine: ModelEngine,
    pub models: Vec<Model>,
}

impl Context {
    /// Creates the engine with the default (production) limits and loads the
    /// example models from `dist` (normally `plugins/dist/`) through
    /// `ModelEngine::load`.
    /// `quick` selects [`Sampling::quick`] over [`Sampling::full`].
    pub fn new(root: &Path, dist: &Path, quick: bool) -> anyhow::Result<Context> {
        let engine = ModelEngine::new(SandboxLimits::default())?;
        let mut models = Vec::new();
        for name in MODELS {
            let path = dist.join(format!("{name}.wasm"));
            let bytes =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let loaded = engine
                .load(&bytes)
                .with_context(|| format!("cannot load {}", path.display()))?;
            models.push(Model {
                name,
                path,
                size_bytes: bytes.len(),
                loaded,
            });
        }
        Ok(Context {
            root: root.to_owned(),
            sampling: if quick {
                Sampling::quick()
            } else {
                Sampling::full()
            },
            engine,
            models,
        })
    }
}

/// A model's `score_batch`, compiled natively.
pub type NativeScoreBatch = fn(
    &riskhost_sdk::MarketData,
    &[riskhost_sdk::Job],
) -> Vec<Result<riskhost_sdk::Score, riskhost_sdk::ModelError>>;

/// The native `score_batch` of a model, by name.
pub fn native(name: &str) -> anyhow::Result<NativeScoreBatch> {
    use riskhost_sdk::Model as _;
    Ok(match name {
        "var-historical" => var_historical::VarHistorical::score_batch,
        "var-parametric" => var_parametric::VarParametric::score_batch,
        "es-historical" => es_historical::EsHistorical::score_batch,
        other => anyhow::bail!("no native build of model {other}"),
    })
}
