//! riskhost-models: which model versions exist, which one of each model is
//! live, and the only ways a version becomes live.
//!
//! - `registry.rs`: [`ModelRegistry`], name → active version (`ArcSwap`),
//!   the standby LRU of other loaded versions, load failures, bulkheads,
//!   model references.
//! - `store.rs`: [`ModelStore`], the content-addressed store under
//!   `--data-dir` (component bytes, records, active versions, compiled
//!   artifacts).
//! - [`signing`]: ed25519 signatures over a component's digest, their keys
//!   and text formats, and the policy that enforces them.
//! - `deploy.rs`: [`ModelManager`], the one path to activation (file,
//!   upload, rollback, restore), serialised.
//! - `catalog.rs`: [`ModelCatalog`], what the admin routes change models
//!   through: this replica's [`ModelManager`] (`--model-store local`), or
//!   a shared registry that every replica follows (`riskhost-fleet`).
//! - `compile.rs`: [`Compilation`], compiling under a budget of time and
//!   memory in a worker process that can be abandoned, and the worker's
//!   side of it ([`run_compile_worker`]).
//! - `loader.rs`: [`load_file`], [`load_directory`]: files → registry
//!   without a store (the CLI's one-shot runs).
//! - `watcher.rs`: [`watch_directory`], the plugins directory (start-up
//!   scan, then a watch).
//!
//! The crate's API is what this file re-exports, and the [`signing`]
//! module: the one public module, because its functions (`generate_key`,
//! `key_id`, `parse_secret_key`, …) name what they do only under it.
//!
//! May not: know about HTTP, caches, market data or score events; a version
//! is made live only through [`ModelManager`] (or [`load_file`] and
//! [`load_directory`] for one-shot runs).

mod catalog;
mod compile;
mod deploy;
mod loader;
mod registry;
pub mod signing;
mod store;
mod watcher;

pub use self::catalog::{
    ChallengerHook, ChallengerSetting, ChangeBy, FleetView, ModelCatalog, ReplicaView,
    ServedVersion,
};
pub use self::compile::{Compilation, CompileBudget, Isolated, run_worker as run_compile_worker};
pub use self::deploy::{
    DeployError, DeploySettings, Deployed, ModelManager, Staged, VersionId, VersionView,
    VersionsView,
};
pub use self::loader::{load_directory, load_file};
pub use self::registry::{
    Bulkhead, BulkheadLimits, DEFAULT_STANDBY_VERSIONS, LoadFailure, LoadObserver, ModelEntry,
    ModelRef, ModelRegistry, Overloaded, ResolveError, rfc3339,
};
pub use self::store::{Activation, ModelStore, StoreError, VersionRecord};
pub use self::watcher::{WatchSettings, run as watch_directory};
