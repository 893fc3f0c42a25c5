//! riskhost-models: which model versions exist, which one of each model is
//! live, and the only ways a version becomes live.
//!
//! - [`registry`]: name → active version (`ArcSwap`), the standby LRU of
//!   other loaded versions, load failures, bulkheads, model references.
//! - [`store`]: the content-addressed store under `--data-dir` (component
//!   bytes, records, active versions, compiled artifacts).
//! - [`signing`]: ed25519 signatures over a component's digest and the
//!   policy that enforces them.
//! - [`deploy`]: [`deploy::ModelManager`], the one path to activation
//!   (file, upload, rollback, restore), serialised.
//! - [`compile`]: compiling under a budget of time and memory, in a worker
//!   process that can be abandoned (and the worker's side of it).
//! - [`loader`]: files → registry without a store (the CLI's one-shot runs).
//! - [`watcher`]: the plugins directory (start-up scan, then a watch).
//!
//! May not: know about HTTP, caches, market data or score events; a version
//! is made live only through [`deploy`] (or [`loader`] for one-shot runs).

pub mod compile;
pub mod deploy;
pub mod loader;
pub mod registry;
pub mod signing;
pub mod store;
pub mod watcher;
